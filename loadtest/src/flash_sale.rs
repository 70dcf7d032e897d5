//! `flash-sale`: a burst of buy requests lands in a queue and a fixed pool of workers drains it at
//! the pace the inventory allows — the peak being shaved.
//!
//! `--users` orders are scheduled evenly over `--burst-ms` and sent by `--connections` producers,
//! each on its own connection, into an `orders` queue (keyed by user). `--workers` members of one
//! group take them: an order that finds stock takes an item and spends `--process-ms` on it; an
//! order that finds the stock gone is answered "sold out" at once. The inventory is idempotent
//! (an order seen again is counted as a duplicate and not sold twice), so the run can check that
//! exactly `--stock` items were sold, that no acknowledged order was lost and none processed
//! twice. With the defaults that is the seed's arithmetic: 1000 items × 500 ms / 10 workers ≈ 50 s.
//!
//! Latencies are measured from each order's *scheduled* send time, so a producer that falls behind
//! its schedule shows it (no coordinated omission). The target's server process is sampled for its
//! RssAnon. See loadtest/README.md for the figures and the JSON schema.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::baseline;
use crate::common::AcksArg;
use crate::report::{self, LatencyUs};
use crate::target::{self, TargetArgs, TargetKind};

/// What `flash-sale` takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FlashSaleArgs {
    /// Buy requests, one per user.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// The requests are scheduled evenly over this long.
    #[arg(long, default_value_t = 1000)]
    pub burst_ms: u64,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Items for sale.
    #[arg(long, default_value_t = 1000)]
    pub stock: u64,
    /// Members of the workers' group.
    #[arg(long, default_value_t = 10)]
    pub workers: usize,
    /// Time a worker spends on an order that takes an item.
    #[arg(long, default_value_t = 500)]
    pub process_ms: u64,
    /// Partitions of the orders queue, where the target has partitions [default: --workers].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// What a send waits for (loadtest/README.md says what each target promises at each level).
    #[arg(long, value_enum, default_value = "durable")]
    pub acks: AcksArg,
    /// Orders a worker takes per poll and acknowledges together.
    #[arg(long, default_value_t = 100)]
    pub worker_batch: usize,
    /// Give up (and fail) when the sale has not drained after this long.
    #[arg(long, default_value_t = 600)]
    pub time_limit_s: u64,
    /// Sampling interval of the timeline (rates, backlog, RssAnon).
    #[arg(long, default_value_t = 100)]
    pub sample_ms: u64,
    /// Threads that issue the orders on schedule, each driving its share of the connections.
    /// [default: one per connection where a send blocks until answered (redis); else 1]
    #[arg(long)]
    pub pacers: Option<usize>,
    /// First play the sale's schedule over raw TCP to a minimal echo server, with the same
    /// pacers and a reader thread per connection (as the Levee client has): the floor of the
    /// sale's shape on this machine, reported as `baseline_ack_latency_us`.
    #[arg(long)]
    pub baseline: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub target: TargetArgs,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram percentile distributions here (`<target>-ack.hgrm`, `<target>-e2e.hgrm`).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Draw inbound rate, drain rate, backlog and RssAnon over time here (SVG), one line per
    /// target.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first scheduled order.
    pub t_s: f64,
    /// Orders acknowledged per second over the last interval.
    pub inbound_per_s: f64,
    /// Orders processed (sold or sold out) per second over the last interval.
    pub drain_per_s: f64,
    /// Orders acknowledged and not yet processed.
    pub backlog: u64,
    /// The server's RssAnon, when this run started the server.
    pub rss_anon_bytes: Option<u64>,
}

/// What one target did.
#[derive(Debug, Clone, Serialize)]
pub struct FlashSaleResults {
    /// `levee`, `redis` or `nats`.
    pub target: &'static str,
    /// Orders acknowledged.
    pub acked: u64,
    /// Orders whose send failed.
    pub failed: u64,
    /// Items sold: must equal the stock (or the orders, when fewer).
    pub sold: u64,
    /// Orders answered "sold out".
    pub sold_out: u64,
    /// Acknowledged orders never processed.
    pub lost: u64,
    /// Orders processed more than once (not sold twice: the inventory is idempotent).
    pub duplicates: u64,
    /// From each order's scheduled send time to its acknowledgement.
    pub ack_latency_us: Option<LatencyUs>,
    /// Acknowledged orders per second, from the first scheduled order to the last ack.
    pub acked_per_s: f64,
    /// From the first scheduled order to the last ack.
    pub burst_s: f64,
    /// Most orders acknowledged and not yet processed, at any sample.
    pub peak_backlog: u64,
    /// From the last ack to the last order processed.
    pub drain_s: f64,
    /// From the first scheduled order to the last order processed.
    pub total_s: f64,
    /// From each order's scheduled send time to the end of its processing.
    pub e2e_latency_us: Option<LatencyUs>,
    /// The server's largest RssAnon sampled (when this run started the server).
    pub rss_anon_peak_bytes: Option<u64>,
    /// Worker polls or acknowledgements that failed (and were retried).
    pub worker_errors: u64,
    /// Rates, backlog and RssAnon every `--sample-ms`.
    pub timeline: Vec<Sample>,
}

/// The `--json` file: `results` is the first target's, `targets` every target's in run order.
#[derive(Debug, Serialize)]
struct FlashSaleReport<'a> {
    scenario: &'static str,
    config: &'a FlashSaleArgs,
    results: &'a FlashSaleResults,
    targets: &'a [FlashSaleResults],
    /// With `--baseline`: the echo round trip of each order at the sale's shape.
    baseline_ack_latency_us: Option<&'a LatencyUs>,
}

/// An order on the wire: the user and its scheduled send time (µs after the sale opened).
fn encode_order(user: u64, scheduled_us: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&user.to_le_bytes());
    v[8..].copy_from_slice(&scheduled_us.to_le_bytes());
    v
}

fn decode_order(v: &[u8]) -> Option<(u64, u64)> {
    let user = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    Some((user, at))
}

/// The shop: stock, and what happened to every order. Idempotent: an order is handled once.
struct Shop {
    process: Duration,
    stock: AtomicU64,
    sold: AtomicU64,
    sold_out: AtomicU64,
    duplicates: AtomicU64,
    processed: AtomicU64,
    /// By user: the order was handled.
    seen: Vec<AtomicBool>,
    /// By user: the order was acknowledged to its producer.
    acked: Vec<AtomicBool>,
    acked_count: AtomicU64,
    e2e: Mutex<Histogram<u64>>,
    last_processed: Mutex<Option<Instant>>,
}

impl Shop {
    fn new(users: u64, stock: u64, process: Duration) -> Shop {
        Shop {
            process,
            stock: AtomicU64::new(stock),
            sold: AtomicU64::new(0),
            sold_out: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            seen: (0..users).map(|_| AtomicBool::new(false)).collect(),
            acked: (0..users).map(|_| AtomicBool::new(false)).collect(),
            acked_count: AtomicU64::new(0),
            e2e: Mutex::new(report::latency_histogram()),
            last_processed: Mutex::new(None),
        }
    }

    /// A worker handles one order.
    fn handle(&self, user: u64, scheduled: Instant) {
        let Some(seen) = self.seen.get(user as usize) else {
            // Not an order of this run: count it as what it is, a message processed twice over.
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if seen.swap(true, Ordering::AcqRel) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let took = self
            .stock
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1))
            .is_ok();
        if took {
            std::thread::sleep(self.process);
            self.sold.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sold_out.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        if let Ok(mut h) = self.e2e.lock() {
            report::record(&mut h, now.saturating_duration_since(scheduled));
        }
        if let Ok(mut last) = self.last_processed.lock() {
            *last = Some(now);
        }
        self.processed.fetch_add(1, Ordering::Release);
    }
}

/// What one producer connection's acknowledgement callbacks recorded.
struct Seen {
    latency: Mutex<Histogram<u64>>,
    failed: AtomicU64,
    done: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            latency: Mutex::new(report::latency_histogram()),
            failed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }
}

impl Seen {
    /// An order's acknowledgement (or failure) arrived.
    fn record(&self, shop: &Shop, user: u64, scheduled: Instant, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                let now = Instant::now();
                if let Ok(mut h) = self.latency.lock() {
                    report::record(&mut h, now.saturating_duration_since(scheduled));
                }
                if let Some(a) = shop.acked.get(user as usize) {
                    a.store(true, Ordering::Release);
                }
                shop.acked_count.fetch_add(1, Ordering::Release);
                if let Ok(mut last) = self.last.lock() {
                    *last = last.max(Some(now));
                }
            }
            Err(e) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("order {user}: send failed: {e:#}");
                }
            }
        }
        self.done.fetch_add(1, Ordering::Release);
    }
}

/// The sale's send schedule: `users` orders evenly over `--burst-ms`, user `u` on connection
/// `u % connections`, connection `c` driven by pacer `c % pacers` (as its `c / pacers`-th).
#[derive(Debug, Clone)]
struct Schedule {
    users: u64,
    connections: usize,
    pacers: usize,
    gap_ns: f64,
}

impl Schedule {
    fn new(args: &FlashSaleArgs, pacers: usize) -> Schedule {
        Schedule {
            users: args.users,
            connections: args.connections,
            pacers: pacers.clamp(1, args.connections),
            gap_ns: (args.burst_ms as f64 * 1e6) / args.users as f64,
        }
    }

    /// How many connections pacer `p` drives.
    fn connections_of(&self, p: usize) -> usize {
        (p..self.connections).step_by(self.pacers).count()
    }

    /// How many orders connection `c` carries.
    fn orders_on(&self, c: usize) -> u64 {
        let c = c as u64;
        if c >= self.users {
            0
        } else {
            (self.users - 1 - c) / self.connections as u64 + 1
        }
    }

    /// Pacer `p`'s share of the sale, from `base`: `send(local connection, user, scheduled
    /// time, encoded order)` at each order's scheduled time (at once when late). Returns the
    /// orders sent.
    fn play(
        &self,
        p: usize,
        base: Instant,
        mut send: impl FnMut(usize, u64, Instant, [u8; 16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        for user in 0..self.users {
            let connection = (user % self.connections as u64) as usize;
            if connection % self.pacers != p {
                continue;
            }
            let at_ns = (user as f64 * self.gap_ns) as u64;
            let scheduled = base + Duration::from_nanos(at_ns);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            send(
                connection / self.pacers,
                user,
                scheduled,
                encode_order(user, at_ns / 1000),
            )?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// The sale's schedule played over raw TCP to an echo server ([`baseline::echo_streams`]): the
/// same pacers, and a reader thread per connection as the Levee client has, with nothing stored
/// and nothing decoded. Each order's round trip from its scheduled time.
fn echo_baseline(args: &FlashSaleArgs) -> anyhow::Result<Histogram<u64>> {
    let schedule = Schedule::new(args, args.pacers.unwrap_or(1));
    let server = baseline::echo_streams(args.connections)?;
    let streams = (0..args.connections)
        .map(|_| baseline::connect(server.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = Instant::now() + Duration::from_millis(200);
    let readers = streams
        .iter()
        .enumerate()
        .map(|(c, stream)| {
            let mut stream = stream.try_clone()?;
            let expected = schedule.orders_on(c);
            std::thread::Builder::new()
                .name(format!("echo-reader-{c}"))
                .spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut h = report::latency_histogram();
                    let mut order = [0u8; 16];
                    for _ in 0..expected {
                        stream
                            .read_exact(&mut order)
                            .context("echo baseline read")?;
                        let (_, scheduled_us) =
                            decode_order(&order).context("echo baseline: a torn order")?;
                        let scheduled = base + Duration::from_micros(scheduled_us);
                        report::record(&mut h, Instant::now().saturating_duration_since(scheduled));
                    }
                    Ok(h)
                })
                .context("cannot start an echo reader")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut by_pacer: Vec<Vec<std::net::TcpStream>> =
        (0..schedule.pacers).map(|_| Vec::new()).collect();
    for (c, stream) in streams.into_iter().enumerate() {
        by_pacer[c % schedule.pacers].push(stream);
    }
    let pacers = by_pacer
        .into_iter()
        .enumerate()
        .map(|(p, mut mine)| {
            let schedule = schedule.clone();
            std::thread::Builder::new()
                .name(format!("echo-pacer-{p}"))
                .spawn(move || -> anyhow::Result<()> {
                    schedule.play(p, base, |local, _, _, order| {
                        mine[local].write_all(&order).context("echo baseline write")
                    })?;
                    for s in &mine {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                    Ok(())
                })
                .context("cannot start an echo pacer")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for p in pacers {
        p.join()
            .map_err(|_| anyhow::anyhow!("an echo pacer panicked"))??;
    }
    let mut all = report::latency_histogram();
    for r in readers {
        let h = r
            .join()
            .map_err(|_| anyhow::anyhow!("an echo reader panicked"))??;
        all.add(&h).ok();
    }
    server.join()?;
    Ok(all)
}

/// What the producers' acknowledgement callbacks gathered.
struct Acks {
    latency: Histogram<u64>,
    failed: u64,
    last: Option<Instant>,
}

/// Runs the sale on every `--target`, one after another.
pub fn run(args: FlashSaleArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.connections == 0 || args.workers == 0 || args.worker_batch == 0 {
        bail!("--users, --connections, --workers and --worker-batch must be at least 1");
    }
    if args.target.target.is_empty() {
        bail!("--target names no target");
    }
    let echo = if args.baseline {
        eprintln!("flash-sale baseline: the same schedule over raw TCP to an echo server");
        let h = echo_baseline(&args)?;
        if let Some(dir) = &args.hgrm {
            std::fs::create_dir_all(dir)?;
            report::write_hgrm(&dir.join("echo-ack.hgrm"), &h)?;
        }
        let l = LatencyUs::from_histogram(&h);
        report::print_latency("  echo round trip", l.as_ref());
        l
    } else {
        None
    };
    let mut all = Vec::new();
    for &kind in &args.target.target {
        eprintln!("flash-sale on {}", kind.name());
        let results = run_one(&args, kind)?;
        print_summary(&results, &args);
        all.push(results);
    }
    if all.len() > 1 {
        print_table(&all);
    }
    if let Some(dir) = &args.hgrm {
        // Written by run_one; say where.
        eprintln!("histograms in {}", dir.display());
    }
    if let Some(path) = &args.plot {
        crate::plot::flash_sale(path, &all, &args)?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&FlashSaleReport {
            scenario: "flash-sale",
            config: &args,
            results: &all[0],
            targets: &all,
            baseline_ack_latency_us: echo.as_ref(),
        })?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut broken = Vec::new();
    for r in &all {
        let expected = args.stock.min(r.acked);
        if r.sold != expected || r.lost != 0 || r.duplicates != 0 || r.failed != 0 {
            broken.push(format!(
                "{}: sold {} (expected {expected}), lost {}, duplicates {}, failed sends {}",
                r.target, r.sold, r.lost, r.duplicates, r.failed
            ));
        }
    }
    if !broken.is_empty() {
        bail!("the sale did not hold: {}", broken.join("; "));
    }
    Ok(())
}

fn run_one(args: &FlashSaleArgs, kind: TargetKind) -> anyhow::Result<FlashSaleResults> {
    let mut target = target::start(kind, &args.target, args.acks)?;
    let partitions = args.partitions.unwrap_or(args.workers as u32).max(1);
    target.prepare(partitions)?;
    let target: Arc<Box<dyn target::Target>> = Arc::new(target);
    let shop = Arc::new(Shop::new(
        args.users,
        args.stock,
        Duration::from_millis(args.process_ms),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let worker_errors = Arc::new(AtomicU64::new(0));

    // Workers first, as in production: the group is settled before the sale opens.
    let ready = Arc::new(AtomicU64::new(0));
    let mut base_for_workers = Vec::new();
    let workers: Vec<_> = (0..args.workers)
        .map(|i| {
            let (target, shop, stop, errors, ready) = (
                target.clone(),
                shop.clone(),
                stop.clone(),
                worker_errors.clone(),
                ready.clone(),
            );
            let (tx, rx) = mpsc::channel::<Instant>();
            base_for_workers.push(tx);
            let batch = args.worker_batch;
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    let mut w = target.worker(i, batch)?;
                    let mut base = None;
                    let mut first = true;
                    while !stop.load(Ordering::Acquire) {
                        match w.poll(batch, Duration::from_millis(100)) {
                            Ok(orders) => {
                                if first {
                                    first = false;
                                    ready.fetch_add(1, Ordering::Release);
                                }
                                if orders.is_empty() {
                                    continue;
                                }
                                let base = *base.get_or_insert_with(|| {
                                    rx.recv().unwrap_or_else(|_| Instant::now())
                                });
                                for o in &orders {
                                    match decode_order(o) {
                                        Some((user, at)) => {
                                            shop.handle(user, base + Duration::from_micros(at))
                                        }
                                        None => {
                                            shop.duplicates.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                }
                                if let Err(e) = w.commit() {
                                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                        eprintln!("worker {i}: commit failed: {e:#}");
                                    }
                                }
                            }
                            Err(e) => {
                                if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                    eprintln!("worker {i}: poll failed: {e:#}");
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    w.close()
                })
                .context("cannot start a worker thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Acquire) < args.workers as u64 {
        if Instant::now() >= settle_deadline {
            stop.store(true, Ordering::Release);
            bail!("the workers did not all start polling within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let a rebalance triggered by the last joins settle.
    std::thread::sleep(Duration::from_millis(500));

    // Producers: each on its own connection, driven by a pacer thread that issues its share
    // of the orders at their scheduled times. Where a send returns before its answer, one
    // pacer drives many connections, so the generator spends its CPU on the sends rather than
    // on waking a sleeping thread per order.
    let schedule = Schedule::new(
        args,
        args.pacers.unwrap_or(if target.send_blocks() {
            args.connections
        } else {
            1
        }),
    );
    let pacers = schedule.pacers;
    let barrier = Arc::new(Barrier::new(pacers + 1));
    let base_cell = Arc::new(Mutex::new(None::<Instant>));
    let acks = Arc::new(Mutex::new(Acks {
        latency: report::latency_histogram(),
        failed: 0,
        last: None,
    }));
    let producers: Vec<_> = (0..pacers)
        .map(|p| {
            let (target, barrier, base_cell, acks, shop) = (
                target.clone(),
                barrier.clone(),
                base_cell.clone(),
                acks.clone(),
                shop.clone(),
            );
            let schedule = schedule.clone();
            std::thread::Builder::new()
                .name(format!("pacer-{p}"))
                .spawn(move || -> anyhow::Result<()> {
                    let mine: anyhow::Result<Vec<_>> = (0..schedule.connections_of(p))
                        .map(|_| target.producer())
                        .collect();
                    barrier.wait();
                    let mut mine = mine?;
                    let base = base_cell
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .context("no start time")?;
                    // Acknowledgements are recorded by callbacks, on whichever thread completes
                    // them: no thread waits per send.
                    let seen = Arc::new(Seen::default());
                    let sent = schedule.play(p, base, |local, user, scheduled, order| {
                        let (seen, shop) = (seen.clone(), shop.clone());
                        mine[local].send(
                            user,
                            &order,
                            Box::new(move |result| seen.record(&shop, user, scheduled, result)),
                        );
                        Ok(())
                    })?;
                    while seen.done.load(Ordering::Acquire) < sent {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    if let Ok(mut a) = acks.lock() {
                        if let Ok(h) = seen.latency.lock() {
                            a.latency.add(&*h).ok();
                        }
                        a.failed += seen.failed.load(Ordering::Acquire);
                        a.last = a.last.max(seen.last.lock().ok().and_then(|l| *l));
                    }
                    mine.into_iter().try_for_each(|producer| producer.close())
                })
                .context("cannot start a pacer thread")
        })
        .collect::<anyhow::Result<_>>()?;

    // Open the sale: every producer starts from the same instant.
    let base = Instant::now() + Duration::from_millis(200);
    *base_cell.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(base);
    for tx in &base_for_workers {
        let _ = tx.send(base);
    }
    drop(base_for_workers);
    barrier.wait();

    // Sample until every acknowledged order is processed.
    let bar = progress_bar(args.users, kind);
    let pid = target.server_pid();
    let interval = Duration::from_millis(args.sample_ms.max(10));
    let deadline = base + Duration::from_secs(args.time_limit_s);
    let mut timeline: Vec<Sample> = Vec::new();
    let (mut prev_acked, mut prev_processed, mut prev_t) = (0u64, 0u64, base);
    let mut rss_peak: Option<u64> = None;
    let mut peak_backlog = 0u64;
    let mut producers = Some(producers);
    let mut sending = true;
    loop {
        std::thread::sleep(interval);
        let now = Instant::now();
        let acked = shop.acked_count.load(Ordering::Acquire);
        let processed = shop.processed.load(Ordering::Acquire);
        let rss = pid.and_then(target::rss_anon_bytes);
        rss_peak = rss_peak.max(rss);
        let backlog = acked.saturating_sub(processed);
        peak_backlog = peak_backlog.max(backlog);
        let dt = now
            .saturating_duration_since(prev_t)
            .as_secs_f64()
            .max(1e-6);
        if now > base {
            timeline.push(Sample {
                t_s: report::round2(now.duration_since(base).as_secs_f64()),
                inbound_per_s: ((acked - prev_acked) as f64 / dt).round(),
                drain_per_s: ((processed - prev_processed) as f64 / dt).round(),
                backlog,
                rss_anon_bytes: rss,
            });
            (prev_acked, prev_processed, prev_t) = (acked, processed, now);
        }
        if sending
            && producers
                .as_ref()
                .is_some_and(|p| p.iter().all(|t| t.is_finished()))
        {
            sending = false;
            for t in producers.take().into_iter().flatten() {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a pacer thread panicked"))??;
            }
            bar.set_length(shop.acked_count.load(Ordering::Acquire));
            bar.set_message(format!("{} processing", kind.name()));
        }
        bar.set_position(if sending { acked } else { processed });
        if !sending && processed >= shop.acked_count.load(Ordering::Acquire) {
            break;
        }
        if now >= deadline {
            eprintln!("time limit reached before the sale drained");
            break;
        }
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Release);
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("worker: {e:#}"),
            Err(_) => eprintln!("a worker thread panicked"),
        }
    }
    for t in producers.into_iter().flatten() {
        let _ = t.join();
    }
    let target =
        Arc::try_unwrap(target).map_err(|_| anyhow::anyhow!("the target is still in use"))?;
    target.stop()?;

    let acks = Arc::try_unwrap(acks)
        .map_err(|_| anyhow::anyhow!("acks still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let shop = Arc::try_unwrap(shop).map_err(|_| anyhow::anyhow!("shop still shared"))?;
    let acked = shop.acked_count.load(Ordering::Acquire);
    let lost = shop
        .acked
        .iter()
        .zip(&shop.seen)
        .filter(|(a, s)| a.load(Ordering::Acquire) && !s.load(Ordering::Acquire))
        .count() as u64;
    let last_ack = acks.last.unwrap_or(base);
    let last_processed = shop
        .last_processed
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or(last_ack);
    let burst = last_ack.saturating_duration_since(base);
    let e2e = shop.e2e.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = &args.hgrm {
        std::fs::create_dir_all(dir)?;
        report::write_hgrm(
            &dir.join(format!("{}-ack.hgrm", kind.name())),
            &acks.latency,
        )?;
        report::write_hgrm(&dir.join(format!("{}-e2e.hgrm", kind.name())), &e2e)?;
    }
    Ok(FlashSaleResults {
        target: kind.name(),
        acked,
        failed: acks.failed,
        sold: shop.sold.load(Ordering::Acquire),
        sold_out: shop.sold_out.load(Ordering::Acquire),
        lost,
        duplicates: shop.duplicates.load(Ordering::Acquire),
        ack_latency_us: LatencyUs::from_histogram(&acks.latency),
        acked_per_s: report::per_s(acked, burst),
        burst_s: report::round2(burst.as_secs_f64()),
        peak_backlog,
        drain_s: report::round2(
            last_processed
                .saturating_duration_since(last_ack)
                .as_secs_f64(),
        ),
        total_s: report::round2(last_processed.saturating_duration_since(base).as_secs_f64()),
        e2e_latency_us: LatencyUs::from_histogram(&e2e),
        rss_anon_peak_bytes: rss_peak,
        worker_errors: worker_errors.load(Ordering::Acquire),
        timeline,
    })
}

fn progress_bar(len: u64, kind: TargetKind) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(format!("{} acknowledged", kind.name()));
    bar
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "n/a".to_string(),
        |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    )
}

fn print_summary(r: &FlashSaleResults, args: &FlashSaleArgs) {
    println!(
        "flash-sale on {}: {} users over {} ms from {} connections, {} in stock, {} workers x {} ms, acks {}",
        r.target,
        args.users,
        args.burst_ms,
        args.connections,
        args.stock,
        args.workers,
        args.process_ms,
        format!("{:?}", args.acks).to_lowercase()
    );
    println!(
        "  acknowledged {} ({} failed) at {:.0}/s over {:.2} s; peak backlog {}; drained {:.2} s after the last ack; {:.2} s in all",
        r.acked, r.failed, r.acked_per_s, r.burst_s, r.peak_backlog, r.drain_s, r.total_s
    );
    println!(
        "  sold {} (stock {}), sold out {}, lost {}, processed twice {}; server RssAnon peak {}",
        r.sold,
        args.stock,
        r.sold_out,
        r.lost,
        r.duplicates,
        mib(r.rss_anon_peak_bytes)
    );
    report::print_latency("  ack latency", r.ack_latency_us.as_ref());
    report::print_latency("  end-to-end latency", r.e2e_latency_us.as_ref());
}

fn print_table(all: &[FlashSaleResults]) {
    println!();
    println!(
        "{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>6} {:>5} {:>5} {:>11}",
        "target",
        "acked/s",
        "ack p50 ms",
        "ack p99 ms",
        "ack max ms",
        "peak blog",
        "drain s",
        "total s",
        "sold",
        "lost",
        "dup",
        "rss peak"
    );
    for r in all {
        let ms = |l: &Option<LatencyUs>, f: fn(&LatencyUs) -> f64| {
            l.as_ref()
                .map_or_else(|| "n/a".into(), |l| format!("{:.2}", f(l) / 1000.0))
        };
        println!(
            "{:<8} {:>9.0} {:>10} {:>10} {:>10} {:>10} {:>9.2} {:>9.2} {:>6} {:>5} {:>5} {:>11}",
            r.target,
            r.acked_per_s,
            ms(&r.ack_latency_us, |l| l.p50),
            ms(&r.ack_latency_us, |l| l.p99),
            ms(&r.ack_latency_us, |l| l.max),
            r.peak_backlog,
            r.drain_s,
            r.total_s,
            r.sold,
            r.lost,
            r.duplicates,
            mib(r.rss_anon_peak_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_order_when_encoded_should_decode_the_same() {
        assert_eq!(decode_order(&encode_order(7, 123_456)), Some((7, 123_456)));
        assert_eq!(decode_order(&[1, 2, 3]), None);
    }

    #[test]
    fn given_pacers_when_the_sale_is_played_should_send_each_order_once_on_its_connection() {
        let schedule = Schedule {
            users: 103,
            connections: 10,
            pacers: 3,
            gap_ns: 0.0,
        };
        assert_eq!(
            (0..3).map(|p| schedule.connections_of(p)).sum::<usize>(),
            10
        );
        assert_eq!((0..10).map(|c| schedule.orders_on(c)).sum::<u64>(), 103);
        let mut seen = vec![0u32; 103];
        for p in 0..3 {
            let mut per_connection = vec![0u64; schedule.connections_of(p)];
            let sent = schedule
                .play(p, Instant::now(), |local, user, _, order| {
                    assert_eq!((user % 10) as usize, local * 3 + p);
                    assert_eq!(decode_order(&order).map(|o| o.0), Some(user));
                    per_connection[local] += 1;
                    seen[user as usize] += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!(sent, per_connection.iter().sum::<u64>());
            for (local, n) in per_connection.iter().enumerate() {
                assert_eq!(*n, schedule.orders_on(local * 3 + p));
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn given_the_echo_baseline_when_played_should_time_every_order() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: FlashSaleArgs,
        }
        let args = <Cli as clap::Parser>::try_parse_from([
            "flash-sale",
            "--users",
            "200",
            "--burst-ms",
            "50",
            "--connections",
            "4",
        ])
        .unwrap()
        .args;
        assert_eq!(echo_baseline(&args).unwrap().len(), 200);
    }

    #[test]
    fn given_a_shop_when_orders_repeat_should_sell_once_and_count_duplicates() {
        let shop = Shop::new(3, 1, Duration::ZERO);
        let now = Instant::now();
        shop.handle(0, now);
        shop.handle(0, now);
        shop.handle(1, now);
        shop.handle(9, now);
        assert_eq!(shop.sold.load(Ordering::Relaxed), 1);
        assert_eq!(shop.sold_out.load(Ordering::Relaxed), 1);
        assert_eq!(shop.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(shop.processed.load(Ordering::Relaxed), 2);
    }
}
