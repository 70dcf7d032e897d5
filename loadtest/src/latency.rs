//! `latency`: how long single messages take, acknowledged and end to end.
//!
//! **Open loop** (the default). A sender thread sends one message every `1 / --rate` seconds on a
//! fixed schedule, whatever the acknowledgements do, so a slow broker cannot slow the load down
//! and hide its own stalls (coordinated omission). Every latency is measured from the message's
//! *scheduled* send time: a message the sender could only send late carries the delay. A collector
//! thread waits for the acknowledgements in order; a consumer thread long-polls the partition and
//! reads the scheduled time embedded in each message's value (`[seq u64][scheduled_ns u64]`, ns
//! since the run's start on the monotonic clock) for the end-to-end latency.
//!
//! **One in flight** (`--one-in-flight`). A closed loop: send one message, wait for its ack, repeat,
//! for `--duration-s`. This is the service time of one request, comparable with the 64-byte
//! ping-pong of the same client socket against a minimal glommio echo server (`--baseline`), which
//! is the ratio the latency target is stated in. No consumer runs unless `--e2e true`, so nothing
//! else competes for the two CPUs.
//!
//! `--api run` sends each message as a one-record run with `Connection::produce` (the call under
//! `Client::produce_run`; in one-in-flight mode, `Client::produce_run` itself). `--api producer`
//! uses the batching `Producer` with `linger_ms = 0`, which adds a hop through its sender thread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use levee::client::{
    Client, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, ResetPolicy, ResponseFuture,
    SendFuture, StartFrom,
};
use levee::protocol::Acks;
use serde::Serialize;

use crate::baseline;
use crate::broker::{Broker, BrokerArgs};
use crate::common::{self, AcksArg, PRODUCE_TIMEOUT_MS};
use crate::report::{self, LatencyUs, Report};

/// Bytes of the value prefix the scenario reads back: sequence number and scheduled time.
const STAMP_BYTES: usize = 16;
/// Acknowledgements the collector may lag behind the sender before the sender blocks.
const PENDING_MAX: usize = 1 << 16;
/// How long after the last send the consumer may take to see the last message.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most messages one run sends, whatever the rate and duration say.
const MESSAGES_MAX: u64 = 50_000_000;

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// One-record runs straight on the shard connection (`Client::produce_run`'s path).
    Run,
    /// The batching `Producer`, `linger_ms = 0`.
    Producer,
}

/// Arguments of `levee-loadtest latency`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LatencyArgs {
    /// Messages per second on the open-loop schedule (ignored with --one-in-flight).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Bytes of each message's value (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 100)]
    pub message_bytes: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Sent first and not recorded: connections, first page touches, caches.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// What a produce waits for (`none` measures end-to-end latency only).
    #[arg(long, value_enum, default_value_t = AcksArg::Written)]
    pub acks: AcksArg,
    /// Closed loop, one message in flight, back to back, instead of the open-loop schedule.
    #[arg(long)]
    pub one_in_flight: bool,
    /// Run a consumer for end-to-end latency [default: true, false with --one-in-flight].
    #[arg(long, action = clap::ArgAction::Set)]
    pub e2e: Option<bool>,
    /// How messages are sent.
    #[arg(long, value_enum, default_value_t = Api::Run)]
    pub api: Api,
    /// Also measure a 64-byte TCP ping-pong against a glommio echo server and print the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Write `{"scenario","config","results"}` here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write HdrHistogram percentile distributions here (`ack.hgrm`, `e2e.hgrm`, `pingpong.hgrm`).
    #[arg(long)]
    pub hgrm: Option<std::path::PathBuf>,
    /// Draw the latency distributions (ack, end-to-end, ping-pong) here (SVG).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// The broker measured, and how it was started.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// What `latency` measured.
#[derive(Debug, Serialize)]
pub struct LatencyResults {
    /// Not measured by this scenario.
    pub produce_mb_s: Option<f64>,
    /// Not measured by this scenario.
    pub consume_mb_s: Option<f64>,
    /// Open loop: scheduled send → ack. One in flight: send → ack.
    pub ack_latency_us: Option<LatencyUs>,
    /// Scheduled (open loop) or actual (one in flight) send → the consumer has the record.
    pub e2e_latency_us: Option<LatencyUs>,
    /// Open loop only: actual send → ack, i.e. without the sender's own lateness.
    pub ack_from_send_us: Option<LatencyUs>,
    /// Open loop only: how late the sender was against its schedule.
    pub send_lag_us: Option<LatencyUs>,
    /// `open-loop` or `one-in-flight`.
    pub mode: &'static str,
    /// Messages sent after the warm-up (the recorded ones).
    pub messages: u64,
    /// Achieved send rate over the measured part, messages per second.
    pub sent_msgs_s: f64,
    /// With `--baseline`: the ping-pong round trips.
    pub pingpong_latency_us: Option<LatencyUs>,
    /// With `--baseline`: ack p99 / ping-pong p99 (target ≤ 1.3 for one in flight, acks=written).
    pub ack_p99_over_pingpong_p99: Option<f64>,
}

/// Sends messages; one of the two APIs.
enum Sender {
    Run {
        client: Client,
        conn: std::sync::Arc<levee::client::Connection>,
    },
    Producer(Producer),
}

/// An acknowledgement to wait for.
enum Pending {
    Run(Option<ResponseFuture>),
    Producer(SendFuture),
}

impl Pending {
    fn wait(self) -> anyhow::Result<()> {
        match self {
            Pending::Run(None) => Ok(()),
            Pending::Run(Some(f)) => common::produce_result(&f.wait()?, 0).map(|_| ()),
            Pending::Producer(f) => f.wait().map(|_| ()).map_err(Into::into),
        }
    }
}

struct Ctx<'a> {
    args: &'a LatencyArgs,
    topic: &'a str,
    acks: Acks,
    /// The zero of every embedded timestamp.
    base: Instant,
}

impl Ctx<'_> {
    /// The value of message `seq` scheduled at `scheduled`.
    fn value(&self, seq: u64, scheduled: Instant) -> Vec<u8> {
        let mut v = vec![0u8; self.args.message_bytes];
        v[..8].copy_from_slice(&seq.to_le_bytes());
        let ns = scheduled.duration_since(self.base).as_nanos() as u64;
        v[8..16].copy_from_slice(&ns.to_le_bytes());
        for (i, b) in v[STAMP_BYTES..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        v
    }

    fn send(
        &self,
        sender: &Sender,
        seq: u64,
        scheduled: Instant,
        run: &mut Vec<u8>,
    ) -> anyhow::Result<Pending> {
        let value = self.value(seq, scheduled);
        match sender {
            Sender::Run { conn, .. } => {
                run.clear();
                common::encode_record(run, value.len(), &value)?;
                let f = conn.produce(self.acks, PRODUCE_TIMEOUT_MS, &[(self.topic, 0, run)])?;
                Ok(Pending::Run(f))
            }
            Sender::Producer(p) => Ok(Pending::Producer(
                p.send(ProducerRecord::new(self.topic, value).with_partition(0)),
            )),
        }
    }
}

/// Runs the scenario and prints (and optionally writes) the report.
pub fn run(args: LatencyArgs) -> anyhow::Result<()> {
    if args.message_bytes < STAMP_BYTES {
        bail!("--message-bytes must be at least {STAMP_BYTES}");
    }
    if !(args.duration_s > 0.0 && args.warmup_s >= 0.0) {
        bail!("--duration-s must be positive and --warmup-s not negative");
    }
    if !args.one_in_flight && (args.rate == 0 || args.rate > 10_000_000) {
        bail!("--rate must be between 1 and 10000000");
    }
    let mode = if args.one_in_flight {
        "one-in-flight"
    } else {
        "open-loop"
    };
    let e2e = args.e2e.unwrap_or(!args.one_in_flight);
    println!(
        "latency: {mode}, {} B messages, acks={:?}, api={:?}{}, {} s (+{} s warm-up), e2e {}",
        args.message_bytes,
        args.acks,
        args.api,
        if args.one_in_flight {
            String::new()
        } else {
            format!(", {} msg/s", args.rate)
        },
        args.duration_s,
        args.warmup_s,
        if e2e { "on" } else { "off" }
    );

    // The ping-pong first, on a quiet machine, as long as the measured part of the run.
    let pingpong = if args.baseline {
        let h = baseline::measure_pingpong(
            MESSAGES_MAX,
            Duration::from_secs_f64(args.duration_s),
            1_000,
        )?;
        let l = LatencyUs::from_histogram(&h).context("the ping-pong recorded nothing")?;
        report::print_latency("ping-pong (64 B)", Some(&l));
        Some((l, h))
    } else {
        None
    };

    let broker = Broker::start(&args.broker)?;
    let topic = common::unique_topic("latency");
    let bar = report::TimedBar::start(
        Duration::from_secs_f64(args.warmup_s + args.duration_s),
        "latency",
    );
    let result = measure(&args, &broker, &topic, e2e);
    drop(bar);
    if !broker.is_owned() {
        if let Ok(client) = Client::connect(&broker.addr, levee::client::ClientConfig::default()) {
            let _ = client.delete_topic(&topic);
        }
    }
    let stopped = broker.stop();
    let (mut results, mut histograms) = result?;
    stopped?;
    results.mode = mode;
    if let Some((p, h)) = pingpong {
        histograms.push(("pingpong", h));
        results.ack_p99_over_pingpong_p99 = results
            .ack_latency_us
            .and_then(|a| report::ratio(a.p99, p.p99));
        results.pingpong_latency_us = Some(p);
    }

    report::print_latency("ack latency", results.ack_latency_us.as_ref());
    if !args.one_in_flight {
        report::print_latency("ack from actual send", results.ack_from_send_us.as_ref());
        report::print_latency("sender lag", results.send_lag_us.as_ref());
    }
    report::print_latency("end-to-end latency", results.e2e_latency_us.as_ref());
    println!(
        "sent {} messages after warm-up ({:.0} msg/s)",
        results.messages, results.sent_msgs_s
    );
    if let (Some(p), Some(r)) = (
        &results.pingpong_latency_us,
        results.ack_p99_over_pingpong_p99,
    ) {
        println!(
            "ack_p99 / pingpong_p99 ratio: {r:.3} ({:.1} / {:.1} µs; {mode}; target <= 1.3 for one in flight)",
            results.ack_latency_us.map_or(0.0, |a| a.p99),
            p.p99
        );
    }
    report::write_histograms(args.hgrm.as_deref(), &histograms)?;
    if let Some(path) = &args.plot {
        let series: Vec<(&str, &Histogram<u64>)> = histograms
            .iter()
            .map(|(name, h)| {
                let label = match *name {
                    "ack" => "ack (from the scheduled send)",
                    "e2e" => "end to end",
                    _ => "TCP ping-pong, 64 B (baseline)",
                };
                (label, h)
            })
            .collect();
        let title = format!(
            "latency: {mode}, {} B messages, acks {}{}",
            args.message_bytes,
            format!("{:?}", args.acks).to_lowercase(),
            if args.one_in_flight {
                String::new()
            } else {
                format!(", {} msg/s", args.rate)
            }
        );
        crate::plot::percentiles(path, &title, &series)?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = &args.json {
        report::write_json(
            path,
            &Report {
                scenario: "latency",
                config: &args,
                results: &results,
            },
        )?;
    }
    Ok(())
}

/// A named latency histogram (ns) for `--hgrm` and `--plot`.
type Named = (&'static str, Histogram<u64>);

fn measure(
    args: &LatencyArgs,
    broker: &Broker,
    topic: &str,
    e2e: bool,
) -> anyhow::Result<(LatencyResults, Vec<Named>)> {
    let client = common::setup_topic(&broker.addr, topic, 1, None, None)?;
    let acks: Acks = args.acks.into();
    let sender = match args.api {
        Api::Run => {
            let addrs = common::partition_addrs(&client, &broker.addr, topic)?;
            let conns = common::connections_for(&addrs, &[0])?;
            Sender::Run {
                client: client.clone(),
                conn: conns[&0].clone(),
            }
        }
        Api::Producer => Sender::Producer(client.producer(ProducerConfig {
            acks,
            linger_ms: 0,
            ..ProducerConfig::default()
        })?),
    };
    let ctx = Ctx {
        args,
        topic,
        acks,
        base: Instant::now(),
    };
    let warmup = Duration::from_secs_f64(args.warmup_s);
    let duration = Duration::from_secs_f64(args.duration_s);
    // The consumer starts at the end of the (empty) log before anything is sent.
    let mut consumer = if e2e {
        Some(client.consumer(ConsumerConfig {
            partitions: Some(vec![0]),
            start: StartFrom::Latest,
            reset: ResetPolicy::Error,
            max_wait_ms: 100,
            ..ConsumerConfig::new(topic)
        })?)
    } else {
        None
    };

    let results = std::thread::scope(|s| -> anyhow::Result<(LatencyResults, Vec<Named>)> {
        let (sent_tx, sent_rx) = mpsc::channel::<u64>();
        let consumer_thread = consumer.as_mut().map(|c| {
            let ctx = &ctx;
            s.spawn(move || consume(ctx, c, sent_rx))
        });
        let outcome = if args.one_in_flight {
            closed_loop(&ctx, &sender, warmup, duration)
        } else {
            open_loop(&ctx, &sender, warmup, duration)
        };
        // Tell the consumer how many messages to expect (0 on failure: stop at once).
        let _ = sent_tx.send(outcome.as_ref().map_or(0, |o| o.total_sent));
        let e2e_hist = match consumer_thread {
            Some(h) => Some(h.join().expect("consumer panicked")?),
            None => None,
        };
        let o = outcome?;
        let results = LatencyResults {
            produce_mb_s: None,
            consume_mb_s: None,
            ack_latency_us: LatencyUs::from_histogram(&o.ack),
            e2e_latency_us: e2e_hist.as_ref().and_then(LatencyUs::from_histogram),
            ack_from_send_us: o.from_send.as_ref().and_then(LatencyUs::from_histogram),
            send_lag_us: o.lag.as_ref().and_then(LatencyUs::from_histogram),
            mode: "",
            messages: o.measured,
            sent_msgs_s: report::per_s(o.measured, o.measured_for),
            pingpong_latency_us: None,
            ack_p99_over_pingpong_p99: None,
        };
        let mut histograms = vec![("ack", o.ack)];
        if let Some(h) = e2e_hist {
            histograms.push(("e2e", h));
        }
        Ok((results, histograms))
    })?;
    if let Sender::Producer(p) = &sender {
        p.close();
    }
    Ok(results)
}

/// What a send loop measured.
struct SendOutcome {
    ack: Histogram<u64>,
    from_send: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    /// Messages sent in all, warm-up included.
    total_sent: u64,
    /// Messages sent after the warm-up.
    measured: u64,
    measured_for: Duration,
}

/// The first sequence number that is recorded.
fn first_measured(ctx: &Ctx<'_>) -> u64 {
    if ctx.args.one_in_flight {
        0 // decided by time instead; see closed_loop
    } else {
        (ctx.args.rate as f64 * ctx.args.warmup_s).round() as u64
    }
}

fn open_loop(
    ctx: &Ctx<'_>,
    sender: &Sender,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<SendOutcome> {
    let rate = ctx.args.rate as f64;
    let total = ((rate * (warmup + duration).as_secs_f64()).round() as u64).clamp(1, MESSAGES_MAX);
    let skip = first_measured(ctx);
    let interval = Duration::from_secs_f64(1.0 / rate);
    // The schedule starts a little after now, so the first sends are not already late.
    let start = Instant::now() + Duration::from_millis(10);
    let scheduled_at = |seq: u64| start + interval.mul_f64(seq as f64);
    let (tx, rx) = mpsc::sync_channel::<(u64, Instant, Instant, Pending)>(PENDING_MAX);
    std::thread::scope(|s| {
        let collector = s.spawn(
            move || -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
                let mut ack = report::latency_histogram();
                let mut from_send = report::latency_histogram();
                for (seq, scheduled, sent, pending) in rx {
                    pending.wait().with_context(|| format!("message {seq}"))?;
                    let now = Instant::now();
                    if seq >= skip {
                        report::record(&mut ack, now - scheduled);
                        report::record(&mut from_send, now - sent);
                    }
                }
                Ok((ack, from_send))
            },
        );
        let mut lag = report::latency_histogram();
        let mut run = Vec::new();
        fine_timer_slack();
        let mut sent = 0;
        let mut failure = None;
        for seq in 0..total {
            let scheduled = scheduled_at(seq);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let actual = Instant::now();
            if seq >= skip {
                report::record(&mut lag, actual.saturating_duration_since(scheduled));
            }
            match ctx.send(sender, seq, scheduled, &mut run) {
                Ok(p) => {
                    if tx.send((seq, scheduled, actual, p)).is_err() {
                        break; // the collector failed; its error is reported below
                    }
                    sent += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let measured_for = Instant::now().saturating_duration_since(scheduled_at(skip));
        drop(tx);
        let (ack, from_send) = collector.join().expect("collector panicked")?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(SendOutcome {
            ack,
            from_send: Some(from_send),
            lag: Some(lag),
            total_sent: sent,
            measured: sent.saturating_sub(skip),
            measured_for,
        })
    })
}

fn closed_loop(
    ctx: &Ctx<'_>,
    sender: &Sender,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<SendOutcome> {
    let mut ack = report::latency_histogram();
    let mut run = Vec::new();
    // The consumer tells warm-up from measured messages by their embedded time since ctx.base:
    // the warm-up must end at the same instant for both.
    let start = ctx.base;
    let mut measuring_since = None;
    let mut seq = 0u64;
    let mut measured = 0u64;
    while seq < MESSAGES_MAX {
        let now = Instant::now();
        let measuring = now >= start + warmup;
        if measuring && measuring_since.is_none() {
            measuring_since = Some(now);
        }
        if measuring_since.is_some_and(|t| now >= t + duration) {
            break;
        }
        match sender {
            Sender::Run { client, .. } => {
                // Exactly what an application calls: encode, then Client::produce_run.
                run.clear();
                let value = ctx.value(seq, now);
                common::encode_record(&mut run, value.len(), &value)?;
                let t0 = Instant::now();
                client.produce_run(ctx.topic, 0, &run, ctx.acks)?;
                if measuring {
                    report::record(&mut ack, t0.elapsed());
                }
            }
            Sender::Producer(_) => {
                let t0 = Instant::now();
                ctx.send(sender, seq, t0, &mut run)?.wait()?;
                if measuring {
                    report::record(&mut ack, t0.elapsed());
                }
            }
        }
        seq += 1;
        measured += u64::from(measuring);
    }
    Ok(SendOutcome {
        ack,
        from_send: None,
        lag: None,
        total_sent: seq,
        measured,
        measured_for: measuring_since.map_or(Duration::ZERO, |t| t.elapsed()),
    })
}

/// Reads until it has seen as many messages as were sent (told through `sent`), or the deadline.
fn consume(
    ctx: &Ctx<'_>,
    consumer: &mut levee::client::Consumer,
    sent: mpsc::Receiver<u64>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = report::latency_histogram();
    let skip = first_measured(ctx);
    let warmup_ns = Duration::from_secs_f64(ctx.args.warmup_s).as_nanos() as u64;
    let mut seen = 0u64;
    let mut expected: Option<u64> = None;
    let mut deadline: Option<Instant> = None;
    // The run cannot outlast warm-up + duration by much; this bounds the loop if the sender stalls.
    let hard_deadline = Instant::now()
        + Duration::from_secs_f64(ctx.args.warmup_s + ctx.args.duration_s)
        + Duration::from_secs(60)
        + DRAIN_TIMEOUT;
    loop {
        if expected.is_none() {
            if let Ok(n) = sent.try_recv() {
                expected = Some(n);
                deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
        }
        if expected.is_some_and(|n| seen >= n) {
            return Ok(hist);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || now >= hard_deadline {
            bail!(
                "consumer saw {seen} of {} messages in time",
                expected.map_or("?".into(), |n| n.to_string())
            );
        }
        let fetched = consumer.poll_fetched(Duration::from_millis(100))?;
        let now = Instant::now();
        for f in &fetched {
            for record in f.records() {
                let record = record?;
                let m = record.message()?;
                let v = m.value.as_slice();
                if v.len() < STAMP_BYTES {
                    bail!("record {} has no timestamp", record.offset());
                }
                let seq = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                let at_ns = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
                let sent_at = ctx.base + Duration::from_nanos(at_ns);
                // Open loop: skip the warm-up by sequence number; closed loop: by send time.
                let measured = if ctx.args.one_in_flight {
                    at_ns >= warmup_ns
                } else {
                    seq >= skip
                };
                if measured {
                    report::record(&mut hist, now.saturating_duration_since(sent_at));
                }
                seen += 1;
            }
        }
    }
}

/// Asks for 1 µs timer slack on this thread, so the open-loop sender wakes close to its schedule
/// (the default slack is 50 µs). Failure only costs precision.
fn fine_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}
