//! `GET /metrics` (OpenMetrics text, which Prometheus scrapes) and `GET /healthz` on the metrics
//! listener.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded request size, a
//! read deadline, `Connection: close`. Rendering never blocks a shard: it reads the shards'
//! counters (atomics), the partition snapshots each shard publishes every
//! [`SNAPSHOT_INTERVAL`], the commit floors, the storage threads' flush histogram and the
//! request-latency histograms, and encodes them with `prometheus-client`. Health asks every shard
//! to answer a no-op within a deadline, so a stalled or dead shard shows as such: `200` with one
//! `shard N ok` line per shard when all answer, `503` otherwise.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::runtime::{self, TcpListener};
use crate::shard::{PartitionInfo, Shard};
use crate::storage::{FlushSnapshot, Io, FLUSH_BUCKETS_US};

/// How often each shard publishes its partitions' offsets and sizes, and shows it is alive.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);
/// A shard that has not shown it is alive for this long is reported down.
const ALIVE_WITHIN_MS: u64 = 5_000;

type Labels = Vec<(&'static str, String)>;
/// One shard's partitions: `(topic, partition, offsets and size)`.
type PartitionSnapshot = Arc<Vec<(String, u32, PartitionInfo)>>;
type RequestHistograms = Family<Labels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The metrics state the shards write and the endpoint reads.
pub struct Metrics {
    /// Per shard, its partitions at the last snapshot.
    partitions: Vec<Mutex<PartitionSnapshot>>,
    /// Request handling time by api: the family rendered, and its histograms by api key, made
    /// once so that recording a request allocates nothing.
    requests: RequestHistograms,
    by_api: Vec<Histogram>,
}

impl Metrics {
    /// Empty metrics for `shards` shards.
    pub fn new(shards: u16) -> Metrics {
        let requests: RequestHistograms = Family::new_with_constructor(request_histogram);
        let by_api = crate::protocol::ApiKey::ALL
            .iter()
            .map(|k| {
                requests
                    .get_or_create(&vec![("api", k.name().to_string())])
                    .clone()
            })
            .collect();
        Metrics {
            partitions: (0..shards).map(|_| Mutex::default()).collect(),
            requests,
            by_api,
        }
    }

    /// Shard `shard` publishes its partitions.
    pub fn publish(&self, shard: u16, partitions: Vec<(String, u32, PartitionInfo)>) {
        if let Some(slot) = self.partitions.get(usize::from(shard)) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(partitions);
        }
    }

    /// A request of `api` took `took` to handle.
    pub fn request_done(&self, api: crate::protocol::ApiKey, took: Duration) {
        if let Some(h) = self.by_api.get(api as usize) {
            h.observe(took.as_secs_f64());
        }
    }

    fn partitions(&self) -> Vec<(String, u32, PartitionInfo)> {
        let mut all = Vec::new();
        for slot in &self.partitions {
            let snap = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
            all.extend(snap.iter().cloned());
        }
        all
    }
}

/// The storage threads' flush histogram, encoded from its snapshot.
#[derive(Debug)]
struct FlushHistogram(FlushSnapshot);

impl EncodeMetric for FlushHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = FLUSH_BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .zip(self.0.buckets.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, self.0.buckets.last().copied().unwrap_or(0)));
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum_us as f64 / 1e6,
            self.0.rounds,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

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
                "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                if path == "/metrics" { CONTENT_TYPE } else { "text/plain; charset=utf-8" },
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

/// The exposition format `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter of every shard, labelled `shard`.
type ShardCounter = (&'static str, &'static str, fn(&crate::shard::Stats) -> u64);

fn shard_family<
    M: Default
        + Clone
        + prometheus_client::metrics::TypedMetric
        + EncodeMetric
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
) -> Family<Labels, M> {
    let family = Family::<Labels, M>::default();
    registry.register(name, help, family.clone());
    family
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True when a shard that last showed it runs at `alive_ms` counts as up at `now`.
fn is_up(alive_ms: u64, now: u64) -> bool {
    alive_ms > 0 && now.saturating_sub(alive_ms) <= ALIVE_WITHIN_MS
}

/// The Stats api's answer, from the same sources as `/metrics`.
pub(crate) fn stats_response(shared: &Shared) -> crate::protocol::StatsResponse {
    use crate::protocol::{GroupLagStats, PartitionStats, ShardStats, StatsResponse};
    let now = now_ms();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let shards = shared
        .stats
        .iter()
        .enumerate()
        .map(|(shard, s)| ShardStats {
            shard: shard as u16,
            up: is_up(get(&s.alive_ms), now),
            connections: s.connections.load(Ordering::Relaxed) as u32,
            requests: get(&s.requests),
            records_in: get(&s.records_in),
            bytes_in: get(&s.bytes_in),
            records_out: get(&s.records_out),
            bytes_out: get(&s.bytes_out),
            backlog_throttled: get(&s.backlog_throttled),
            backlog_rejected: get(&s.backlog_rejected),
            backlog_dropped_segments: get(&s.backlog_dropped_segments),
            quota_throttled: get(&s.quota_throttled),
            throttle_ms: get(&s.throttle_ms) + get(&s.quota_throttle_ms),
        })
        .collect();
    let mut partitions: Vec<PartitionStats> = shared
        .metrics
        .partitions()
        .into_iter()
        .map(|(topic, partition, info)| PartitionStats {
            topic,
            partition,
            earliest: info.earliest,
            next: info.next,
            durable: info.durable,
            size_bytes: info.size_bytes,
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let ends: std::collections::HashMap<(&str, u32), u64> = partitions
        .iter()
        .map(|p| ((p.topic.as_str(), p.partition), p.next))
        .collect();
    let mut groups: Vec<GroupLagStats> = shared
        .flow
        .floors
        .all()
        .into_iter()
        .map(|(topic, partition, group, committed)| GroupLagStats {
            lag: ends
                .get(&(topic.as_str(), partition))
                .map_or(0, |end| end.saturating_sub(committed)),
            group,
            topic,
            partition,
            committed,
        })
        .collect();
    groups
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    StatsResponse {
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        memory_used: shared.budget.used() as u64,
        memory_max: shared.budget.max() as u64,
        shards,
        partitions,
        groups,
    }
}

fn render(shared: &Shared) -> String {
    let mut registry = Registry::default();
    let counters: [ShardCounter; 11] = [
        ("levee_records_in", "Records appended.", |s| s.records_in.load(Ordering::Relaxed)),
        ("levee_bytes_in", "Bytes of records appended.", |s| s.bytes_in.load(Ordering::Relaxed)),
        ("levee_records_out", "Records served to consumers.", |s| s.records_out.load(Ordering::Relaxed)),
        ("levee_bytes_out", "Bytes of records served to consumers.", |s| s.bytes_out.load(Ordering::Relaxed)),
        ("levee_requests", "Requests handled.", |s| s.requests.load(Ordering::Relaxed)),
        ("levee_forwarded", "Operations run on another shard.", |s| s.forwarded.load(Ordering::Relaxed)),
        ("levee_panics", "Requests or operations that panicked and were answered Internal.", |s| s.panics.load(Ordering::Relaxed)),
        ("levee_backlog_throttled", "Produce blocks answered Throttled because their partition's backlog was full (policy block).", |s| s.backlog_throttled.load(Ordering::Relaxed)),
        ("levee_backlog_rejected", "Produce blocks answered QueueFull because their partition's backlog was full (policy reject).", |s| s.backlog_rejected.load(Ordering::Relaxed)),
        ("levee_backlog_dropped_segments", "Segments deleted to keep a backlog within its bound (policy drop-oldest).", |s| s.backlog_dropped_segments.load(Ordering::Relaxed)),
        ("levee_quota_throttled", "Produce and Fetch blocks answered Throttled because a quota of their client id or topic was spent.", |s| s.quota_throttled.load(Ordering::Relaxed)),
    ];
    for (name, help, get) in counters {
        let family = shard_family::<Counter>(&mut registry, name, help);
        for (shard, stats) in shared.stats.iter().enumerate() {
            family
                .get_or_create(&vec![("shard", shard.to_string())])
                .inc_by(get(stats));
        }
    }
    let throttle = shard_family::<Counter>(
        &mut registry,
        "levee_throttle_ms",
        "Milliseconds of waiting handed to clients in throttle_ms, by reason (backlog, quota).",
    );
    for (shard, stats) in shared.stats.iter().enumerate() {
        for (reason, ms) in [
            ("backlog", stats.throttle_ms.load(Ordering::Relaxed)),
            ("quota", stats.quota_throttle_ms.load(Ordering::Relaxed)),
        ] {
            throttle
                .get_or_create(&vec![
                    ("shard", shard.to_string()),
                    ("reason", reason.to_string()),
                ])
                .inc_by(ms);
        }
    }
    let now = now_ms();
    let gauges: [ShardCounter; 3] = [
        ("levee_connections", "Open client connections.", |s| {
            s.connections.load(Ordering::Relaxed) as u64
        }),
        (
            "levee_partitions_open",
            "Partitions whose log is open.",
            |s| s.partitions_open.load(Ordering::Relaxed) as u64,
        ),
        (
            "levee_shard_alive_ms",
            "When the shard last showed it runs (ms since the Unix epoch).",
            |s| s.alive_ms.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in gauges {
        let family = shard_family::<Gauge>(&mut registry, name, help);
        for (shard, stats) in shared.stats.iter().enumerate() {
            family
                .get_or_create(&vec![("shard", shard.to_string())])
                .set(get(stats) as i64);
        }
    }
    let up = shard_family::<Gauge>(
        &mut registry,
        "levee_shard_up",
        "1 when the shard showed it runs within the last 5 s.",
    );
    for (shard, stats) in shared.stats.iter().enumerate() {
        let fresh = is_up(stats.alive_ms.load(Ordering::Relaxed), now);
        up.get_or_create(&vec![("shard", shard.to_string())])
            .set(i64::from(fresh));
    }

    let topics = shared.catalog.snapshot();
    let broker: [(&'static str, &'static str, u64); 5] = [
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
    for (name, help, value) in broker {
        let g = Gauge::<i64>::default();
        g.set(value as i64);
        registry.register(name, help, g);
    }

    // Partitions, from the shards' snapshots.
    let partitions = shared.metrics.partitions();
    let start = shard_family::<Gauge>(
        &mut registry,
        "levee_partition_log_start_offset",
        "First offset still stored in the partition.",
    );
    let end = shard_family::<Gauge>(
        &mut registry,
        "levee_partition_log_end_offset",
        "Offset the partition's next record will get.",
    );
    let durable = shard_family::<Gauge>(
        &mut registry,
        "levee_partition_durable_offset",
        "Every offset below this is durable.",
    );
    let bytes = shard_family::<Gauge>(
        &mut registry,
        "levee_partition_bytes",
        "Bytes of records the partition stores.",
    );
    let mut ends = std::collections::HashMap::new();
    for (topic, partition, info) in &partitions {
        let labels = vec![
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        start.get_or_create(&labels).set(info.earliest as i64);
        end.get_or_create(&labels).set(info.next as i64);
        durable.get_or_create(&labels).set(info.durable as i64);
        bytes.get_or_create(&labels).set(info.size_bytes as i64);
        ends.insert((topic.as_str(), *partition), info.next);
    }
    // Groups: committed offsets (as coordinators published them) and lag.
    let committed = shard_family::<Gauge>(
        &mut registry,
        "levee_group_committed_offset",
        "The group's committed offset in the partition.",
    );
    let lag = shard_family::<Gauge>(
        &mut registry,
        "levee_group_lag",
        "Messages of the partition the group has not committed.",
    );
    for (topic, partition, group, offset) in shared.flow.floors.all() {
        let labels = vec![
            ("group", group),
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        committed.get_or_create(&labels).set(offset as i64);
        if let Some(&end) = ends.get(&(topic.as_str(), partition)) {
            lag.get_or_create(&labels)
                .set(end.saturating_sub(offset) as i64);
        }
    }

    registry.register(
        "levee_request_duration_seconds",
        "Time to handle a request, by api (for Produce with acks=durable, including the flush).",
        shared.metrics.requests.clone(),
    );
    let flush = shared.pool.flush_stats();
    let failed = Counter::<u64>::default();
    failed.inc_by(flush.failed);
    registry.register(
        "levee_flush_failed",
        "Flush rounds that failed (each fail-stops its log).",
        failed,
    );
    registry.register(
        "levee_fsync_duration_seconds",
        "Flush rounds of the storage threads: a directory sync when due and the fdatasync of every dirty segment of one log.",
        FlushHistogram(flush),
    );

    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}
