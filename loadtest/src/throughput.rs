//! `throughput`: how many bytes per second go into the broker and come back out.
//!
//! **Produce.** Each producer thread encodes one batch of records once (`record::encode`; all
//! records are the same size, so any prefix of the batch is a valid shorter batch) and sends it
//! over and over as Produce requests on its own connection to the owning shard —
//! `Connection::produce`, the call under `Client::produce_run`, with up to `--in-flight` batches
//! pipelined. A batch counts when its acknowledgement (per `--acks`) arrives; its ack latency is
//! from the call that sends it to the response. With `--acks none` there is no response, so the
//! phase ends when `ListOffsets` shows every record stored.
//!
//! **Consume.** Each consumer thread reads its partitions from the first offset with Fetch requests
//! of `--fetch-bytes`, up to `--fetch-in-flight` pipelined per partition (the next request's
//! offset is predicted from the size of a full response; a short response is filled in with a
//! synchronous fetch), and iterates every record with `record::Records`, which checks both CRCs,
//! checks that offsets are consecutive, and counts the record bytes.
//!
//! **Phases.** `sequential` (the default) produces everything, then consumes everything, so each
//! direction is measured alone, like its baseline. `concurrent` runs both at once; consumers then
//! follow the producers with long polls.
//!
//! **Warm-up** (`--warmup-messages`, with `--retention-bytes`): messages produced before the
//! measured phases, untimed and not consumed. With retention below what the warm-up wrote, the
//! measured phase runs as a long-lived broker does: every roll retires the oldest segment and the
//! retired file, its pages resident, becomes a later segment. Without it every byte lands in pages
//! the kernel has to find first, which on a VM can cost more than the rest of the append (see
//! tuning.md); both figures are worth knowing.
//!
//! **Baselines** (`--baseline`, before the Levee phases): the same produce frames written raw into
//! a glommio sink, and the same number of bytes read raw from a glommio source (see `baseline`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use levee::client::{Connection, ResponseFuture};
use levee::protocol::{self, Acks, OffsetSpec};
use levee::record::Records;
use serde::Serialize;

use crate::baseline;
use crate::broker::{Broker, BrokerArgs};
use crate::common::{self, AcksArg, PRODUCE_TIMEOUT_MS};
use crate::report::{self, LatencyUs, Report};

/// Longest long poll while a consumer waits at the end of the log.
const TAIL_WAIT_MS: u32 = 100;
/// How long `--acks none` may take to show every record stored once the producers are done.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// When consumers run relative to producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phases {
    /// Produce everything, then consume everything.
    Sequential,
    /// Produce and consume at the same time.
    Concurrent,
}

/// Record bytes acknowledged to the producers and served to the consumers so far in the
/// measured phases: the sampler turns them into the timeline, the progress bar into progress.
static PRODUCED_BYTES: AtomicU64 = AtomicU64::new(0);
static CONSUMED_BYTES: AtomicU64 = AtomicU64::new(0);

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct RateSample {
    /// Seconds since the measured phases started.
    pub t_s: f64,
    /// Record bytes produced per second over the last interval, MB = 10^6 bytes.
    pub produce_mb_s: f64,
    /// Record bytes consumed per second over the last interval.
    pub consume_mb_s: f64,
}

/// Samples the byte counters every 100 ms until `done`, drawing progress on a bar when
/// `expected_bytes` (both phases) is known.
fn sample(done: &AtomicBool, expected_bytes: Option<u64>) -> Vec<RateSample> {
    let bar = match expected_bytes {
        Some(len) => indicatif::ProgressBar::new(len),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "  throughput [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes}",
    ) {
        if expected_bytes.is_some() {
            bar.set_style(style);
        }
    }
    let start = Instant::now();
    let (mut prev, mut prev_t) = ((0u64, 0u64), start);
    let mut out = Vec::new();
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        let cur = (
            PRODUCED_BYTES.load(Ordering::Relaxed),
            CONSUMED_BYTES.load(Ordering::Relaxed),
        );
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-6);
        out.push(RateSample {
            t_s: report::round2(now.duration_since(start).as_secs_f64()),
            produce_mb_s: report::round2((cur.0 - prev.0) as f64 / 1e6 / dt),
            consume_mb_s: report::round2((cur.1 - prev.1) as f64 / 1e6 / dt),
        });
        bar.set_position(cur.0 + cur.1);
        (prev, prev_t) = (cur, now);
    }
    bar.finish_and_clear();
    out
}

/// Arguments of `levee-loadtest throughput`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ThroughputArgs {
    /// Producer threads, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer threads; partitions are dealt round-robin, so at most `--partitions`.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Partitions of the test topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    /// Bytes of records per Produce request (at least one record).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// What a produce waits for.
    #[arg(long, value_enum, default_value_t = AcksArg::Written)]
    pub acks: AcksArg,
    /// Messages to produce in total [default: 1000000 unless --duration-s is given].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Produce for this long (with --messages too, whichever ends first).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Produce batches in flight per producer.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Most record bytes per Fetch.
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_bytes: u32,
    /// Fetches in flight per partition (1: one request, one response, like `Client::fetch`).
    #[arg(long, default_value_t = 4)]
    pub fetch_in_flight: usize,
    /// Messages produced before the measured phases, untimed and never consumed.
    #[arg(long, default_value_t = 0)]
    pub warmup_messages: u64,
    /// Retention of the test topic, bytes per partition [default: unlimited]. It must keep what
    /// the measured phase writes, or the consumers fail on an out-of-range offset.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Read visibility of the test topic: written | durable [default: the broker's].
    #[arg(long, value_enum)]
    pub visibility: Option<common::VisibilityArg>,
    /// Whether consumers run after the producers or alongside them.
    #[arg(long, value_enum, default_value_t = Phases::Sequential)]
    pub phases: Phases,
    /// Also measure the raw TCP sink and source in this run and print the ratios.
    #[arg(long)]
    pub baseline: bool,
    /// Upper bound on each phase, whatever the other limits say.
    #[arg(long, default_value_t = 600)]
    pub time_limit_s: u64,
    /// Write `{"scenario","config","results"}` here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write the produce acks' HdrHistogram percentile distribution here (`produce-ack.hgrm`).
    #[arg(long)]
    pub hgrm: Option<std::path::PathBuf>,
    /// Draw produce and consume MB/s over time here (SVG).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// The broker measured, and how it was started.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// What `throughput` measured.
#[derive(Debug, Serialize)]
pub struct ThroughputResults {
    /// Record bytes acknowledged per second, MB = 10^6 bytes.
    pub produce_mb_s: f64,
    /// Messages acknowledged per second.
    pub produce_msgs_s: f64,
    /// Record bytes read and CRC-checked per second.
    pub consume_mb_s: Option<f64>,
    /// Messages read per second.
    pub consume_msgs_s: Option<f64>,
    /// From sending a batch to its acknowledgement; `None` with `--acks none`.
    pub ack_latency_us: Option<LatencyUs>,
    /// Not measured by this scenario.
    pub e2e_latency_us: Option<LatencyUs>,
    /// Messages produced (and consumed, when consumers ran).
    pub messages: u64,
    /// Record bytes produced.
    pub record_bytes: u64,
    /// Bytes of one record, header and padding included.
    pub record_len: usize,
    /// Records per Produce request.
    pub records_per_batch: usize,
    /// Seconds the produce phase took.
    pub produce_s: f64,
    /// Seconds the consume phase took.
    pub consume_s: Option<f64>,
    /// Fetch requests the consumers sent.
    pub fetches: u64,
    /// The same-run baselines, with `--baseline`.
    pub baseline: Option<ThroughputBaseline>,
    /// Produce and consume MB/s every 100 ms over the measured phases.
    pub timeline: Vec<RateSample>,
    /// The produce acks' latency histogram (for `--hgrm`), not written to the JSON.
    #[serde(skip)]
    pub ack_histogram: Option<Histogram<u64>>,
}

/// The raw TCP figures and Levee's ratios to them.
#[derive(Debug, Serialize)]
pub struct ThroughputBaseline {
    /// The produce frames written raw into a glommio sink, MB/s.
    pub raw_sink_mb_s: f64,
    /// The consumed byte count read raw from a glommio source, MB/s.
    pub raw_source_mb_s: f64,
    /// Levee produce MB/s / raw sink MB/s (higher is better; target ≥ 0.7). The raw stream carries
    /// the same Produce frames, whose headers add about 300 B per batch to the record bytes.
    pub produce_over_raw_sink: Option<f64>,
    /// Levee consume MB/s / raw source MB/s (higher is better; target ≥ 0.8).
    pub consume_over_raw_source: Option<f64>,
}

/// The pre-encoded batch every producer sends.
struct Batch {
    bytes: Vec<u8>,
    record_len: usize,
    records: usize,
}

impl Batch {
    fn build(message_bytes: usize, batch_bytes: usize) -> anyhow::Result<Batch> {
        let mut bytes = Vec::new();
        let record_len = common::encode_record(&mut bytes, message_bytes, b"")?;
        let records = (batch_bytes / record_len).max(1);
        for _ in 1..records {
            let n = common::encode_record(&mut bytes, message_bytes, b"")?;
            assert_eq!(n, record_len, "records of one size encode to one length");
        }
        assert_eq!(bytes.len(), records * record_len);
        Ok(Batch {
            bytes,
            record_len,
            records,
        })
    }

    /// The first `n` records: a valid run on its own.
    fn prefix(&self, n: usize) -> &[u8] {
        assert!(n >= 1 && n <= self.records);
        &self.bytes[..n * self.record_len]
    }
}

/// What one producer is asked to do.
struct ProducerPlan {
    partitions: Vec<u32>,
    messages: u64,
    deadline: Instant,
    in_flight: usize,
    acks: Acks,
}

impl ProducerPlan {
    /// Producer `i`'s share of `total` messages to `partitions`, for at most `limit`.
    fn of(
        args: &ThroughputArgs,
        partitions: &[u32],
        i: usize,
        total: u64,
        limit: Duration,
        acks: Acks,
    ) -> ProducerPlan {
        ProducerPlan {
            partitions: partitions.to_vec(),
            messages: share(total, args.producers, i as u32),
            deadline: Instant::now() + limit,
            in_flight: args.in_flight,
            acks,
        }
    }
}

/// What one producer did.
struct ProducerOutcome {
    messages: u64,
    record_bytes: u64,
    /// Produce requests sent.
    batches: u64,
    latency: Histogram<u64>,
    finished: Instant,
}

/// Producer `i`'s partitions: its share when there are at least as many partitions as producers,
/// else one partition shared with others.
fn producer_partitions(i: u32, producers: u32, partitions: u32) -> Vec<u32> {
    if partitions >= producers {
        (0..partitions).filter(|p| p % producers == i).collect()
    } else {
        vec![i % partitions]
    }
}

/// Consumer `j`'s partitions, dealt round-robin.
fn consumer_partitions(j: u32, consumers: u32, partitions: u32) -> Vec<u32> {
    (0..partitions).filter(|p| p % consumers == j).collect()
}

/// Splits `total` into `parts` nearly equal shares.
fn share(total: u64, parts: u32, i: u32) -> u64 {
    let parts = u64::from(parts);
    total / parts + u64::from(u64::from(i) < total % parts)
}

fn run_producer(
    plan: &ProducerPlan,
    conns: &HashMap<u32, Arc<Connection>>,
    topic: &str,
    batch: &Batch,
    start: &Barrier,
) -> anyhow::Result<ProducerOutcome> {
    let mut window: VecDeque<(Instant, ResponseFuture, u32)> =
        VecDeque::with_capacity(plan.in_flight);
    let mut latency = report::latency_histogram();
    let mut batches = 0u64;
    let (mut messages, mut record_bytes) = (0u64, 0u64);
    let complete = |(t0, future, p): (Instant, ResponseFuture, u32),
                    latency: &mut Histogram<u64>|
     -> anyhow::Result<()> {
        let frame = future.wait()?;
        report::record(latency, t0.elapsed());
        common::produce_result(&frame, p)?;
        Ok(())
    };
    start.wait();
    let mut turn = 0usize;
    while messages < plan.messages && Instant::now() < plan.deadline {
        let n = (plan.messages - messages).min(batch.records as u64) as usize;
        let run = batch.prefix(n);
        let p = plan.partitions[turn % plan.partitions.len()];
        turn += 1;
        if window.len() >= plan.in_flight {
            let oldest = window.pop_front().expect("window is full");
            complete(oldest, &mut latency)?;
        }
        let t0 = Instant::now();
        let sent = conns[&p].produce(plan.acks, PRODUCE_TIMEOUT_MS, &[(topic, p, run)])?;
        if let Some(future) = sent {
            window.push_back((t0, future, p));
        }
        messages += n as u64;
        record_bytes += run.len() as u64;
        PRODUCED_BYTES.fetch_add(run.len() as u64, Ordering::Relaxed);
        batches += 1;
    }
    while let Some(oldest) = window.pop_front() {
        complete(oldest, &mut latency)?;
    }
    Ok(ProducerOutcome {
        messages,
        record_bytes,
        batches,
        latency,
        finished: Instant::now(),
    })
}

/// One partition as a consumer reads it.
struct PartitionRead {
    partition: u32,
    conn: Arc<Connection>,
    /// The next offset to hand to the application.
    position: u64,
    /// The offset the next pipelined request asks for.
    next_request: u64,
    /// The log end as last seen in a response.
    log_end: u64,
    window: VecDeque<(u64, ResponseFuture)>,
}

/// What one consumer did.
#[derive(Default)]
struct ConsumerOutcome {
    messages: u64,
    record_bytes: u64,
    fetches: u64,
}

/// Where each partition's log ends, once the producers are done.
type Ends = Arc<OnceLock<HashMap<u32, u64>>>;

struct ConsumerPlan {
    topic: String,
    fetch_bytes: u32,
    fetch_in_flight: usize,
    /// Records in a full response, as first guessed from the record size.
    records_per_fetch: u64,
    deadline: Instant,
}

impl ConsumerPlan {
    /// Reads every partition from `start` to its end offset in `ends`.
    fn run(
        &self,
        parts: ConsumerParts,
        ends: &Ends,
        start: &Barrier,
    ) -> anyhow::Result<ConsumerOutcome> {
        let mut reads: Vec<PartitionRead> = parts
            .into_iter()
            .map(|(partition, conn, offset)| PartitionRead {
                partition,
                conn,
                position: offset,
                next_request: offset,
                log_end: offset,
                window: VecDeque::new(),
            })
            .collect();
        let mut out = ConsumerOutcome::default();
        let mut per_fetch = self.records_per_fetch.max(1);
        start.wait();
        let mut turn = 0usize;
        loop {
            if Instant::now() >= self.deadline {
                bail!("consumer did not finish before the time limit");
            }
            let ends = ends.get();
            let end_of = |r: &PartitionRead| ends.and_then(|e| e.get(&r.partition).copied());
            if reads
                .iter()
                .all(|r| end_of(r).is_some_and(|e| r.position >= e))
            {
                return Ok(out);
            }
            for r in reads.iter_mut() {
                let end = end_of(r);
                // Pipeline requests up to what is known to exist; at the end of the log, one
                // long poll.
                let known = end.unwrap_or(r.log_end).max(r.log_end);
                while r.window.len() < self.fetch_in_flight
                    && r.next_request < known
                    && end.is_none_or(|e| r.next_request < e)
                {
                    self.send(r, r.next_request, 0, &mut out)?;
                    r.next_request += per_fetch;
                }
                if r.window.is_empty() && end.is_none_or(|e| r.position < e) {
                    r.next_request = r.position;
                    let wait = if end.is_some() { 0 } else { TAIL_WAIT_MS };
                    self.send(r, r.position, wait, &mut out)?;
                    r.next_request += per_fetch;
                }
            }
            // Complete the oldest request of the next partition that has one.
            let n = reads.len();
            let Some(i) = (0..n)
                .map(|k| (turn + k) % n)
                .find(|&i| !reads[i].window.is_empty())
            else {
                continue;
            };
            turn = i + 1;
            let r = &mut reads[i];
            let (requested, future) = r.window.pop_front().expect("window is not empty");
            if requested > r.position {
                // A response before this one was shorter than predicted: fill the gap.
                let mut fill_to = requested;
                while r.position < fill_to {
                    let f = r.conn.request(&common::fetch_request(
                        &self.topic,
                        r.partition,
                        r.position,
                        self.fetch_bytes,
                        0,
                    ))?;
                    out.fetches += 1;
                    let got = self.take(r, requested.min(r.position), f, &mut out)?;
                    if got == 0 {
                        fill_to = r.position; // nothing there: do not spin
                    }
                }
            }
            let got = self.take(r, requested, future, &mut out)?;
            // A full response (one that stopped before the log end) tells the real batch size.
            if got > 0 && requested + got < r.log_end {
                per_fetch = got;
            }
        }
    }

    fn send(
        &self,
        r: &mut PartitionRead,
        offset: u64,
        wait_ms: u32,
        out: &mut ConsumerOutcome,
    ) -> anyhow::Result<()> {
        let request =
            common::fetch_request(&self.topic, r.partition, offset, self.fetch_bytes, wait_ms);
        let future = r.conn.request(&request)?;
        r.window.push_back((offset, future));
        out.fetches += 1;
        Ok(())
    }

    /// Checks one response (asked at `requested`) and consumes its records past the position.
    /// Returns how many records it held from `requested` on.
    fn take(
        &self,
        r: &mut PartitionRead,
        requested: u64,
        future: ResponseFuture,
        out: &mut ConsumerOutcome,
    ) -> anyhow::Result<u64> {
        let frame = future.wait()?;
        let (run, log_end) = common::fetch_result(&frame, r.partition)?;
        r.log_end = r.log_end.max(log_end);
        let mut held = 0u64;
        let mut taken = 0u64;
        for record in Records::new(&frame.bytes()[run], protocol::FRAME_SIZE_MAX) {
            let record = record.with_context(|| format!("partition {}", r.partition))?;
            let offset = record.offset();
            if offset < requested {
                continue;
            }
            held += 1;
            if offset < r.position {
                continue; // overlap with an earlier response
            }
            if offset != r.position {
                bail!(
                    "partition {}: expected offset {}, got {offset}",
                    r.partition,
                    r.position
                );
            }
            r.position += 1;
            out.messages += 1;
            out.record_bytes += record.bytes.len() as u64;
            taken += record.bytes.len() as u64;
        }
        CONSUMED_BYTES.fetch_add(taken, Ordering::Relaxed);
        Ok(held)
    }
}

/// The log end offset of every partition.
fn log_ends(
    client: &levee::client::Client,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<HashMap<u32, u64>> {
    (0..partitions)
        .map(|p| Ok((p, client.list_offsets(topic, p, OffsetSpec::Latest)?)))
        .collect()
}

/// Runs the scenario and prints (and optionally writes) the report.
pub fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    if args.producers == 0 || args.consumers == 0 || args.partitions == 0 {
        bail!("--producers, --consumers and --partitions must be at least 1");
    }
    if args.consumers > args.partitions {
        bail!("--consumers must be at most --partitions (partitions are dealt to consumers)");
    }
    if args.in_flight == 0 || args.fetch_in_flight == 0 || args.fetch_bytes == 0 {
        bail!("--in-flight, --fetch-in-flight and --fetch-bytes must be at least 1");
    }
    let messages = match (args.messages, args.duration_s) {
        (Some(m), _) => m,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1_000_000,
    };
    let time_limit = Duration::from_secs(args.time_limit_s);
    let produce_for = args
        .duration_s
        .map_or(time_limit, Duration::from_secs_f64)
        .min(time_limit);
    let batch = Batch::build(args.message_bytes, args.batch_bytes)?;
    let topic = common::unique_topic("throughput");
    println!(
        "throughput: {} producer(s), {} consumer(s), {} partition(s), {} B messages ({} B records), \
         {} records ({} B) per batch, acks={:?}, {} phases",
        args.producers,
        args.consumers,
        args.partitions,
        args.message_bytes,
        batch.record_len,
        batch.records,
        batch.records * batch.record_len,
        args.acks,
        format!("{:?}", args.phases).to_lowercase()
    );

    // Baselines first, while the machine is quiet: no broker, no dirty pages being written back.
    let raw = if args.baseline {
        Some(run_baselines(&args, &batch, &topic, messages, produce_for)?)
    } else {
        None
    };

    let broker = Broker::start(&args.broker)?;
    let result = measure(
        &args,
        &broker,
        &batch,
        &topic,
        messages,
        produce_for,
        time_limit,
    );
    if !broker.is_owned() {
        // Free the space on a broker we do not own, whatever happened.
        if let Ok(client) =
            levee::client::Client::connect(&broker.addr, levee::client::ClientConfig::default())
        {
            let _ = client.delete_topic(&topic);
        }
    }
    let stopped = broker.stop();
    let mut results = result?;
    stopped?;

    if let Some((sink, source)) = raw {
        results.baseline = Some(ThroughputBaseline {
            raw_sink_mb_s: report::mb_s(sink.bytes, sink.elapsed),
            raw_source_mb_s: report::mb_s(source.bytes, source.elapsed),
            produce_over_raw_sink: report::ratio(
                results.produce_mb_s,
                report::mb_s(sink.bytes, sink.elapsed),
            ),
            consume_over_raw_source: results
                .consume_mb_s
                .and_then(|c| report::ratio(c, report::mb_s(source.bytes, source.elapsed))),
        });
    }
    print_results(&results);
    if let Some(h) = results.ack_histogram.take() {
        report::write_histograms(args.hgrm.as_deref(), &[("produce-ack", h)])?;
    }
    if let Some(path) = &args.plot {
        crate::plot::throughput(
            path,
            &format!(
                "throughput: {} producer(s), {} consumer(s), {} partition(s), {} B messages, acks {}, {} phases",
                args.producers,
                args.consumers,
                args.partitions,
                args.message_bytes,
                format!("{:?}", args.acks).to_lowercase(),
                format!("{:?}", args.phases).to_lowercase()
            ),
            &results.timeline,
        )?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = &args.json {
        report::write_json(
            path,
            &Report {
                scenario: "throughput",
                config: &args,
                results: &results,
            },
        )?;
    }
    Ok(())
}

/// Raw sink with the frames Levee will send (same topic name length, same batch sizes), then raw
/// source with the record bytes Levee will serve.
fn run_baselines(
    args: &ThroughputArgs,
    batch: &Batch,
    topic: &str,
    messages: u64,
    produce_for: Duration,
) -> anyhow::Result<(baseline::Transfer, baseline::Transfer)> {
    let acks: Acks = args.acks.into();
    let frame_of = |n: usize| {
        let mut f = Vec::new();
        protocol::encode_produce(
            &mut f,
            1,
            acks,
            PRODUCE_TIMEOUT_MS,
            &[(topic, 0, batch.prefix(n))],
        )
        .unwrap();
        f
    };
    let full = frame_of(batch.records);
    let timed = args.messages.is_none();
    let sink = if timed {
        timed_raw_sink(&full, args.producers, produce_for)?
    } else {
        // Exactly the frames the producers will send: full batches, then each one's remainder.
        let partial: Vec<Vec<u8>> = (0..args.producers)
            .map(|i| {
                let rest = (share(messages, args.producers, i) % batch.records as u64) as usize;
                frame_of(rest.max(1))
            })
            .collect();
        let frames: Vec<Vec<&[u8]>> = (0..args.producers)
            .map(|i| {
                let m = share(messages, args.producers, i);
                let full_count = m / batch.records as u64;
                let mut v: Vec<&[u8]> = vec![&full[..]; full_count as usize];
                if m % batch.records as u64 != 0 {
                    v.push(&partial[i as usize][..]);
                }
                v
            })
            .collect();
        baseline::measure_raw_sink(&frames)?
    };
    println!(
        "raw sink:   {:>9.1} MB/s  ({} B in {:.3} s, {} stream(s))",
        report::mb_s(sink.bytes, sink.elapsed),
        sink.bytes,
        sink.elapsed.as_secs_f64(),
        args.producers
    );
    let consumed_total = if timed {
        sink.bytes
    } else {
        messages * batch.record_len as u64
    };
    let each = consumed_total / u64::from(args.consumers);
    let source = baseline::measure_raw_source(args.consumers as usize, each)?;
    println!(
        "raw source: {:>9.1} MB/s  ({} B in {:.3} s, {} stream(s))",
        report::mb_s(source.bytes, source.elapsed),
        source.bytes,
        source.elapsed.as_secs_f64(),
        args.consumers
    );
    Ok((sink, source))
}

/// Raw sink for a `--duration-s` run: full frames for that long.
fn timed_raw_sink(
    full: &[u8],
    producers: u32,
    duration: Duration,
) -> anyhow::Result<baseline::Transfer> {
    // Measure a short burst to size the stream, then stream for the duration.
    let probe = baseline::measure_raw_sink(&[vec![full; 64]])?;
    let per_s = probe.bytes as f64 / probe.elapsed.as_secs_f64().max(1e-6);
    let count = ((per_s * duration.as_secs_f64()) / full.len() as f64 / f64::from(producers))
        .clamp(1.0, 1e7) as usize;
    let frames: Vec<Vec<&[u8]>> = (0..producers).map(|_| vec![full; count]).collect();
    baseline::measure_raw_sink(&frames)
}

fn measure(
    args: &ThroughputArgs,
    broker: &Broker,
    batch: &Batch,
    topic: &str,
    messages: u64,
    produce_for: Duration,
    time_limit: Duration,
) -> anyhow::Result<ThroughputResults> {
    let client = common::setup_topic(
        &broker.addr,
        topic,
        args.partitions,
        args.retention_bytes,
        args.visibility,
    )?;
    let addrs = common::partition_addrs(&client, &broker.addr, topic)?;
    let ends: Ends = Arc::new(OnceLock::new());

    let producer_conns = (0..args.producers)
        .map(|i| {
            let parts = producer_partitions(i, args.producers, args.partitions);
            Ok((parts.clone(), common::connections_for(&addrs, &parts)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let starts = if args.warmup_messages > 0 {
        warm_up(args, &producer_conns, topic, batch, time_limit)?;
        log_ends(&client, topic, args.partitions)?
    } else {
        HashMap::new()
    };
    // The timeline covers the measured phases only.
    PRODUCED_BYTES.store(0, Ordering::Relaxed);
    CONSUMED_BYTES.store(0, Ordering::Relaxed);
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = sampling.clone();
        let expected = (messages != u64::MAX).then(|| {
            messages
                .saturating_mul(batch.record_len as u64)
                .saturating_mul(2)
        });
        std::thread::spawn(move || sample(&done, expected))
    };
    let measured = measure_phases(
        args,
        batch,
        topic,
        messages,
        produce_for,
        time_limit,
        &client,
        &addrs,
        &producer_conns,
        &starts,
        &ends,
    );
    sampling.store(true, Ordering::Release);
    let timeline = sampler.join().unwrap_or_default();
    let mut results = measured?;
    results.timeline = timeline;
    Ok(results)
}

/// The measured produce and consume phases of [`measure`].
#[allow(clippy::too_many_arguments)]
fn measure_phases(
    args: &ThroughputArgs,
    batch: &Batch,
    topic: &str,
    messages: u64,
    produce_for: Duration,
    time_limit: Duration,
    client: &levee::client::Client,
    addrs: &HashMap<u32, String>,
    producer_conns: &[ProducerConns],
    starts: &HashMap<u32, u64>,
    ends: &Ends,
) -> anyhow::Result<ThroughputResults> {
    let acks: Acks = args.acks.into();
    let concurrent = args.phases == Phases::Concurrent;
    let consumer_plan = |deadline| ConsumerPlan {
        topic: topic.to_string(),
        fetch_bytes: args.fetch_bytes,
        fetch_in_flight: args.fetch_in_flight,
        records_per_fetch: (args.fetch_bytes as usize / batch.record_len).max(1) as u64,
        deadline,
    };
    let consumer_parts = |j: u32| -> anyhow::Result<ConsumerParts> {
        let parts = consumer_partitions(j, args.consumers, args.partitions);
        let conns = common::connections_for(addrs, &parts)?;
        parts
            .iter()
            .map(|&p| {
                // The log end after the warm-up; past what retention deleted in any case.
                let start = client
                    .list_offsets(topic, p, OffsetSpec::Earliest)?
                    .max(starts.get(&p).copied().unwrap_or(0));
                Ok((p, conns[&p].clone(), start))
            })
            .collect()
    };

    let consumer_inputs = if concurrent {
        (0..args.consumers)
            .map(consumer_parts)
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };

    let parties = args.producers as usize + consumer_inputs.len() + 1;
    let start = Barrier::new(parties);
    let (produced, consumed, produce_elapsed, consume_elapsed) = std::thread::scope(|s| {
        let deadline = Instant::now() + time_limit;
        let producers: Vec<_> = producer_conns
            .iter()
            .enumerate()
            .map(|(i, (parts, conns))| {
                let plan = ProducerPlan::of(args, parts, i, messages, produce_for, acks);
                let start = &start;
                std::thread::Builder::new()
                    .name(format!("producer-{i}"))
                    .spawn_scoped(s, move || run_producer(&plan, conns, topic, batch, start))
                    .expect("spawn producer")
            })
            .collect();
        let consumers =
            spawn_consumers(s, consumer_inputs, || consumer_plan(deadline), ends, &start);
        start.wait();
        let t0 = Instant::now();
        let produced: Vec<ProducerOutcome> = producers
            .into_iter()
            .map(|h| h.join().expect("producer panicked"))
            .collect::<anyhow::Result<_>>()?;
        let total: u64 = produced.iter().map(|p| p.messages).sum();
        let mut produce_end = produced.iter().map(|p| p.finished).max().unwrap_or(t0);
        if acks == Acks::None {
            produce_end = settle(client, topic, args.partitions, total)?;
        }
        let _ = ends.set(log_ends(client, topic, args.partitions)?);
        let consumed = join_consumers(consumers)?;
        let consume_elapsed = concurrent.then(|| t0.elapsed());
        anyhow::Ok((produced, consumed, produce_end - t0, consume_elapsed))
    })?;

    let (consumed, consume_elapsed) = if concurrent {
        (consumed, consume_elapsed)
    } else {
        let inputs = (0..args.consumers)
            .map(consumer_parts)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = Barrier::new(inputs.len() + 1);
        std::thread::scope(|s| {
            let deadline = Instant::now() + time_limit;
            let handles = spawn_consumers(s, inputs, || consumer_plan(deadline), ends, &start);
            start.wait();
            let t0 = Instant::now();
            let consumed = join_consumers(handles)?;
            anyhow::Ok((consumed, Some(t0.elapsed())))
        })?
    };

    let messages: u64 = produced.iter().map(|p| p.messages).sum();
    let record_bytes: u64 = produced.iter().map(|p| p.record_bytes).sum();
    let consumed_messages: u64 = consumed.iter().map(|c| c.messages).sum();
    let consumed_bytes: u64 = consumed.iter().map(|c| c.record_bytes).sum();
    if consumed_messages != messages || consumed_bytes != record_bytes {
        bail!(
            "consumed {consumed_messages} messages ({consumed_bytes} B) of {messages} produced ({record_bytes} B)"
        );
    }
    let mut latency = report::latency_histogram();
    for p in &produced {
        latency.add(&p.latency).expect("same histogram bounds");
    }
    let batches: u64 = produced.iter().map(|p| p.batches).sum();
    assert!(batches >= messages.div_ceil(batch.records as u64));
    Ok(ThroughputResults {
        produce_mb_s: report::mb_s(record_bytes, produce_elapsed),
        produce_msgs_s: report::per_s(messages, produce_elapsed),
        consume_mb_s: consume_elapsed.map(|e| report::mb_s(consumed_bytes, e)),
        consume_msgs_s: consume_elapsed.map(|e| report::per_s(consumed_messages, e)),
        ack_latency_us: LatencyUs::from_histogram(&latency),
        e2e_latency_us: None,
        messages,
        record_bytes,
        record_len: batch.record_len,
        records_per_batch: batch.records,
        produce_s: report::round2(produce_elapsed.as_secs_f64() * 1000.0) / 1000.0,
        consume_s: consume_elapsed.map(|e| report::round2(e.as_secs_f64() * 1000.0) / 1000.0),
        fetches: consumed.iter().map(|c| c.fetches).sum(),
        baseline: None,
        timeline: Vec::new(),
        ack_histogram: Some(latency),
    })
}

/// One consumer's partitions: `(partition, connection, first offset)`.
type ConsumerParts = Vec<(u32, Arc<Connection>, u64)>;
type ConsumerHandle<'scope> =
    std::thread::ScopedJoinHandle<'scope, anyhow::Result<ConsumerOutcome>>;

/// Starts one named consumer thread per entry of `inputs`; they wait on `start`.
fn spawn_consumers<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    inputs: Vec<ConsumerParts>,
    plan: impl Fn() -> ConsumerPlan,
    ends: &'scope Ends,
    start: &'scope Barrier,
) -> Vec<ConsumerHandle<'scope>> {
    inputs
        .into_iter()
        .enumerate()
        .map(|(j, parts)| {
            let plan = plan();
            std::thread::Builder::new()
                .name(format!("consumer-{j}"))
                .spawn_scoped(s, move || plan.run(parts, ends, start))
                .expect("spawn consumer")
        })
        .collect()
}

fn join_consumers(handles: Vec<ConsumerHandle<'_>>) -> anyhow::Result<Vec<ConsumerOutcome>> {
    handles
        .into_iter()
        .map(|h| h.join().expect("consumer panicked"))
        .collect()
}

/// One producer's partitions and its connection to the owner of each.
type ProducerConns = (Vec<u32>, HashMap<u32, Arc<Connection>>);

/// Produces `--warmup-messages` with the producers' own connections, untimed.
fn warm_up(
    args: &ThroughputArgs,
    producer_conns: &[ProducerConns],
    topic: &str,
    batch: &Batch,
    time_limit: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let start = Barrier::new(producer_conns.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = producer_conns
            .iter()
            .enumerate()
            .map(|(i, (parts, conns))| {
                // Acknowledged, so the warm-up is over when it is stored.
                let (total, acks) = (args.warmup_messages, Acks::Written);
                let plan = ProducerPlan::of(args, parts, i, total, time_limit, acks);
                let start = &start;
                s.spawn(move || run_producer(&plan, conns, topic, batch, start))
            })
            .collect();
        for h in handles {
            h.join().expect("warm-up producer panicked")?;
        }
        anyhow::Ok(())
    })?;
    println!(
        "warm-up:   {} messages in {:.3} s (untimed)",
        args.warmup_messages,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// With `--acks none`, waits until the broker shows `total` records stored; returns when.
fn settle(
    client: &levee::client::Client,
    topic: &str,
    partitions: u32,
    total: u64,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let stored: u64 = log_ends(client, topic, partitions)?.values().sum();
        if stored >= total {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("only {stored} of {total} records stored {SETTLE_TIMEOUT:?} after the last send");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn print_results(r: &ThroughputResults) {
    println!(
        "produce:    {:>9.1} MB/s  {:>10.0} msg/s  ({} messages, {} B in {:.3} s)",
        r.produce_mb_s, r.produce_msgs_s, r.messages, r.record_bytes, r.produce_s
    );
    match (r.consume_mb_s, r.consume_msgs_s, r.consume_s) {
        (Some(mb), Some(msgs), Some(s)) => println!(
            "consume:    {mb:>9.1} MB/s  {msgs:>10.0} msg/s  ({} fetches in {s:.3} s)",
            r.fetches
        ),
        _ => println!("consume:    not measured"),
    }
    report::print_latency("ack latency (per batch)", r.ack_latency_us.as_ref());
    if let Some(b) = &r.baseline {
        println!(
            "raw sink {:.1} MB/s, raw source {:.1} MB/s",
            b.raw_sink_mb_s, b.raw_source_mb_s
        );
        println!(
            "produce/raw_sink ratio:   {} (target >= 0.7)",
            b.produce_over_raw_sink
                .map_or("n/a".into(), |v| format!("{v:.3}"))
        );
        println!(
            "consume/raw_source ratio: {} (target >= 0.8)",
            b.consume_over_raw_source
                .map_or("n/a".into(), |v| format!("{v:.3}"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_more_partitions_than_producers_when_dealt_should_cover_each_once() {
        let mut all: Vec<u32> = (0..3).flat_map(|i| producer_partitions(i, 3, 8)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(producer_partitions(3, 4, 2), vec![1]);
    }

    #[test]
    fn given_total_when_shared_should_sum_to_total() {
        let total: u64 = (0..7).map(|i| share(100, 7, i)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn given_batch_when_prefixed_should_be_whole_records() {
        let b = Batch::build(1024, 1 << 20).unwrap();
        assert!(b.records > 1);
        assert_eq!(b.prefix(3).len(), 3 * b.record_len);
        let offsets: Vec<u64> = Records::new(b.prefix(3), 1 << 20)
            .map(|r| r.unwrap().offset())
            .collect();
        assert_eq!(
            offsets,
            vec![0, 0, 0],
            "unstamped records all read as offset 0"
        );
    }
}
