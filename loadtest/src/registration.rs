//! `registration`: the async-processing case. A sign-up handler registers a user (`--register-ms`),
//! and two side effects follow: a welcome SMS (`--sms-ms`) and a sign-up gift (`--gift-ms`), each
//! tried up to `--max-attempts` times on injected failures.
//!
//! - **synchronous**: the handler does all of it before answering, retries included.
//! - **levee**: the handler registers, publishes `user.registered` durably and answers; the `sms`
//!   and `gift` groups do the side effects at their own pace, a failure is nacked (delivered again
//!   `--retry-after-ms` later) and, after `--max-attempts` deliveries, dead-lettered.
//!
//! Registrations arrive open-loop at `--rate` and are served by `--handlers` threads in both
//! modes; the latency the user sees is measured from each registration's scheduled arrival. The
//! failures are a pure function of (side effect, user, attempt), so both modes meet the same
//! ones: the users whose SMS failed for good in the synchronous mode must be exactly the users
//! whose SMS event was dead-lettered through Levee, and every side effect must be accounted for.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use levee::client::{Client, ClientConfig, GroupConsumerConfig, ProducerConfig, ProducerRecord};
use levee::protocol::{NackOutcome, TopicConfig};
use serde::Serialize;

use crate::broker::{Broker, BrokerArgs};
use crate::common::{unique_topic, AcksArg};
use crate::report::{self, LatencyUs};

/// What `registration` takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RegistrationArgs {
    /// Registrations.
    #[arg(long, default_value_t = 2000)]
    pub users: u64,
    /// Registrations per second, open loop.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Request-handling threads (both modes).
    #[arg(long, default_value_t = 16)]
    pub handlers: usize,
    /// Time to register a user (both modes).
    #[arg(long, default_value_t = 50)]
    pub register_ms: u64,
    /// Time of one attempt to send the welcome SMS.
    #[arg(long, default_value_t = 50)]
    pub sms_ms: u64,
    /// Time of one attempt to grant the sign-up gift.
    #[arg(long, default_value_t = 50)]
    pub gift_ms: u64,
    /// Chance that one attempt of a side effect fails and must be retried.
    #[arg(long, default_value_t = 0.1)]
    pub failure_rate: f64,
    /// Share of users whose SMS fails every time (a number the gateway rejects).
    #[arg(long, default_value_t = 0.01)]
    pub rejected_rate: f64,
    /// Attempts of a side effect before it is given up (dead-lettered through Levee).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Through Levee: how long after a failure the event is delivered again.
    #[arg(long, default_value_t = 200)]
    pub retry_after_ms: u64,
    /// Through Levee: members of the `sms` group.
    #[arg(long, default_value_t = 4)]
    pub sms_workers: usize,
    /// Through Levee: members of the `gift` group.
    #[arg(long, default_value_t = 2)]
    pub gift_workers: usize,
    /// What the handler's publish waits for.
    #[arg(long, value_enum, default_value = "durable")]
    pub acks: AcksArg,
    /// Give up (and fail) when the side effects are not all done after this long.
    #[arg(long, default_value_t = 300)]
    pub time_limit_s: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub broker: BrokerArgs,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram percentile distributions here (`synchronous-user.hgrm`,
    /// `levee-user.hgrm`, `levee-side-effects.hgrm`).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Draw the user-visible latency distributions of both modes here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// A side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Sms,
    Gift,
}

/// The injected failures: a pure function of (effect, user, attempt).
#[derive(Debug, Clone, Copy)]
struct Failures {
    rate: f64,
    rejected_every: u64,
}

impl Failures {
    fn new(args: &RegistrationArgs) -> Failures {
        Failures {
            rate: args.failure_rate.clamp(0.0, 1.0),
            rejected_every: if args.rejected_rate > 0.0 {
                (1.0 / args.rejected_rate).round().max(1.0) as u64
            } else {
                0
            },
        }
    }

    /// Whether attempt `attempt` (1-based) of `effect` for `user` fails, and why.
    fn fails(&self, effect: Effect, user: u64, attempt: u32) -> Option<&'static str> {
        if effect == Effect::Sms
            && self.rejected_every > 0
            && user % self.rejected_every == 7 % self.rejected_every
        {
            return Some("number rejected by the SMS gateway");
        }
        // splitmix64 of the triple: uniform, reproducible.
        let mut z = user
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(attempt) << 32)
            .wrapping_add(effect as u64 + 1);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        (u < self.rate).then_some(match effect {
            Effect::Sms => "SMS gateway timed out",
            Effect::Gift => "gift inventory locked",
        })
    }
}

/// What happened to one side effect over all users.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EffectOutcome {
    /// Done (on some attempt).
    pub done: u64,
    /// Done after at least one failed attempt.
    pub done_after_retry: u64,
    /// Given up after `--max-attempts` (synchronous) or dead-lettered (Levee).
    pub given_up: u64,
    /// Done more than once (Levee: a delivery after the effect was already done).
    pub duplicates: u64,
    /// Neither done nor given up when the run ended: lost.
    pub unaccounted: u64,
}

/// One mode's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResults {
    /// `synchronous` or `levee`.
    pub mode: &'static str,
    /// From each registration's scheduled arrival to the handler's answer.
    pub user_latency_us: Option<LatencyUs>,
    /// Through Levee: from the scheduled arrival to the side effect done (both effects).
    pub side_effect_latency_us: Option<LatencyUs>,
    /// Registrations answered per second.
    pub answered_per_s: f64,
    /// Seconds until every side effect was done or given up.
    pub total_s: f64,
    /// The welcome SMS.
    pub sms: EffectOutcome,
    /// The sign-up gift.
    pub gift: EffectOutcome,
}

/// What `--json` writes.
#[derive(Debug, Serialize)]
struct RegistrationReport<'a> {
    scenario: &'static str,
    config: &'a RegistrationArgs,
    results: RegistrationResults<'a>,
}

#[derive(Debug, Serialize)]
struct RegistrationResults<'a> {
    synchronous: &'a ModeResults,
    levee: &'a ModeResults,
    /// The users whose SMS was given up are the same in both modes.
    same_failures: bool,
}

/// Registrations at their scheduled arrivals, handed to `handlers` threads; returns the
/// user-visible latency and how long it took to answer them all.
fn serve(
    args: &RegistrationArgs,
    bar: &indicatif::ProgressBar,
    handle: impl Fn(u64) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let next = AtomicU64::new(0);
    let answered = AtomicU64::new(0);
    let latency = Mutex::new(report::latency_histogram());
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..args.handlers.max(1) {
            s.spawn(|| {
                let mut h = report::latency_histogram();
                loop {
                    let user = next.fetch_add(1, Ordering::Relaxed);
                    if user >= args.users {
                        break;
                    }
                    let arrival = start + gap * user as u32;
                    let now = Instant::now();
                    if arrival > now {
                        std::thread::sleep(arrival - now);
                    }
                    if let Err(e) = handle(user) {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                    report::record(&mut h, arrival.elapsed());
                    bar.set_position(answered.fetch_add(1, Ordering::Relaxed) + 1);
                }
                if let Ok(mut l) = latency.lock() {
                    let _ = l.add(&h);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let latency = latency.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((latency, start.elapsed()))
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>24} [{elapsed_precise}] {wide_bar} {pos}/{len}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// The synchronous baseline: everything before the answer.
/// A mode's results, the users whose SMS was given up, and its latency histograms.
type Mode = (
    ModeResults,
    BTreeSet<u64>,
    Vec<(&'static str, Histogram<u64>)>,
);

fn synchronous(args: &RegistrationArgs, failures: Failures) -> anyhow::Result<Mode> {
    let outcomes = Mutex::new((EffectOutcome::default(), EffectOutcome::default()));
    let sms_given_up = Mutex::new(BTreeSet::new());
    let bar = bar(args.users, "synchronous answered");
    let (latency, took) = serve(args, &bar, |user| {
        std::thread::sleep(Duration::from_millis(args.register_ms));
        for effect in [Effect::Sms, Effect::Gift] {
            let ms = match effect {
                Effect::Sms => args.sms_ms,
                Effect::Gift => args.gift_ms,
            };
            let mut done = None;
            for attempt in 1..=args.max_attempts.max(1) {
                std::thread::sleep(Duration::from_millis(ms));
                if failures.fails(effect, user, attempt).is_none() {
                    done = Some(attempt);
                    break;
                }
            }
            let mut o = outcomes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let o = match effect {
                Effect::Sms => &mut o.0,
                Effect::Gift => &mut o.1,
            };
            match done {
                Some(attempt) => {
                    o.done += 1;
                    o.done_after_retry += u64::from(attempt > 1);
                }
                None => {
                    o.given_up += 1;
                    if effect == Effect::Sms {
                        if let Ok(mut g) = sms_given_up.lock() {
                            g.insert(user);
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let (sms, gift) = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((
        ModeResults {
            mode: "synchronous",
            user_latency_us: LatencyUs::from_histogram(&latency),
            side_effect_latency_us: None,
            answered_per_s: report::per_s(args.users, took),
            total_s: report::round2(took.as_secs_f64()),
            sms,
            gift,
        },
        sms_given_up.into_inner().unwrap_or_else(|p| p.into_inner()),
        vec![("synchronous-user", latency)],
    ))
}

/// What the workers of one group recorded, by user: `Some(attempt)` once done, dead-lettered.
struct Fates {
    done: Vec<AtomicU64>,
    dead: Vec<AtomicBool>,
    duplicates: AtomicU64,
    settled: AtomicU64,
}

impl Fates {
    fn new(users: u64) -> Fates {
        Fates {
            done: (0..users).map(|_| AtomicU64::new(0)).collect(),
            dead: (0..users).map(|_| AtomicBool::new(false)).collect(),
            duplicates: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        }
    }

    fn outcome(&self) -> EffectOutcome {
        let mut o = EffectOutcome {
            duplicates: self.duplicates.load(Ordering::Acquire),
            ..EffectOutcome::default()
        };
        for (done, dead) in self.done.iter().zip(&self.dead) {
            match (done.load(Ordering::Acquire), dead.load(Ordering::Acquire)) {
                (0, true) => o.given_up += 1,
                (0, false) => o.unaccounted += 1,
                (attempt, _) => {
                    o.done += 1;
                    o.done_after_retry += u64::from(attempt > 1);
                }
            }
        }
        o
    }
}

/// One member of `group` doing `effect`.
#[allow(clippy::too_many_arguments)]
fn worker(
    addr: &str,
    group: &str,
    topic: &str,
    effect: Effect,
    args: &RegistrationArgs,
    failures: Failures,
    fates: &Fates,
    start: Instant,
    side_effects: &Mutex<Histogram<u64>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let client = Client::connect(addr, ClientConfig::default())?;
    let mut config = GroupConsumerConfig::new(group, [topic]);
    config.max_wait_ms = 100;
    config.max_deliveries = args.max_attempts.max(1);
    let mut consumer = client.group_consumer(config)?;
    let ms = match effect {
        Effect::Sms => args.sms_ms,
        Effect::Gift => args.gift_ms,
    };
    let retry_after = Duration::from_millis(args.retry_after_ms);
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    while !stop.load(Ordering::Acquire) {
        let records = consumer.poll(Duration::from_millis(100))?;
        for r in &records {
            let Some(user) = r
                .value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .filter(|&u| u < args.users)
            else {
                fates.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let slot = &fates.done[user as usize];
            if slot.load(Ordering::Acquire) != 0
                || fates.dead[user as usize].load(Ordering::Acquire)
            {
                fates.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let attempt = r.delivery();
            std::thread::sleep(Duration::from_millis(ms));
            match failures.fails(effect, user, attempt) {
                None => {
                    slot.store(u64::from(attempt), Ordering::Release);
                    fates.settled.fetch_add(1, Ordering::Release);
                    let arrival = start + gap * user as u32;
                    if let Ok(mut h) = side_effects.lock() {
                        report::record(&mut h, arrival.elapsed());
                    }
                }
                Some(why) => {
                    if consumer.nack(r, retry_after, why)? == NackOutcome::DeadLettered {
                        fates.dead[user as usize].store(true, Ordering::Release);
                        fates.settled.fetch_add(1, Ordering::Release);
                    }
                }
            }
        }
        if !records.is_empty() {
            consumer.commit()?;
        }
    }
    consumer.close()?;
    Ok(())
}

/// Through Levee: register, publish, answer; the groups do the rest.
fn through_levee(args: &RegistrationArgs, failures: Failures) -> anyhow::Result<Mode> {
    let broker = Broker::start(&args.broker)?;
    let addr = broker.addr.clone();
    let topic = unique_topic("user.registered");
    let admin = Client::connect(&addr, ClientConfig::default())
        .with_context(|| format!("cannot connect to the broker at {addr}"))?;
    admin.create_topic(
        &topic,
        TopicConfig {
            partitions: 4,
            ..TopicConfig::default()
        },
    )?;
    let sms = Fates::new(args.users);
    let gift = Fates::new(args.users);
    let side_effects = Mutex::new(report::latency_histogram());
    let stop = AtomicBool::new(false);
    let (sms_group, gift_group) = (format!("{topic}-sms"), format!("{topic}-gift"));
    let producer = admin.producer(ProducerConfig {
        acks: args.acks.into(),
        linger_ms: 0,
        ..ProducerConfig::default()
    })?;
    let start_estimate = Instant::now() + Duration::from_millis(50);
    let result = std::thread::scope(
        |s| -> anyhow::Result<(Histogram<u64>, Duration, Duration)> {
            let mut workers = Vec::new();
            for (effect, group, fates, n) in [
                (Effect::Sms, &sms_group, &sms, args.sms_workers),
                (Effect::Gift, &gift_group, &gift, args.gift_workers),
            ] {
                for _ in 0..n.max(1) {
                    let (addr, topic, side_effects, stop) = (&addr, &topic, &side_effects, &stop);
                    workers.push(s.spawn(move || {
                        worker(
                            addr,
                            group,
                            topic,
                            effect,
                            args,
                            failures,
                            fates,
                            start_estimate,
                            side_effects,
                            stop,
                        )
                    }));
                }
            }
            let bar = bar(args.users, "levee answered");
            let served = serve(args, &bar, |user| {
                std::thread::sleep(Duration::from_millis(args.register_ms));
                let mut value = user.to_le_bytes().to_vec();
                value.extend_from_slice(b" registered");
                producer
                    .send(
                        ProducerRecord::new(topic.as_str(), value)
                            .with_key(user.to_le_bytes().to_vec()),
                    )
                    .wait()?;
                Ok(())
            });
            bar.finish_and_clear();
            let (latency, answered) = match served {
                Ok(v) => v,
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    return Err(e);
                }
            };
            let settle = bar_settle(args.users * 2);
            let deadline = Instant::now() + Duration::from_secs(args.time_limit_s);
            loop {
                let settled =
                    sms.settled.load(Ordering::Acquire) + gift.settled.load(Ordering::Acquire);
                settle.set_position(settled);
                if settled >= args.users * 2 || Instant::now() >= deadline {
                    break;
                }
                if workers.iter().any(|w| w.is_finished()) {
                    eprintln!("a worker stopped early");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            settle.finish_and_clear();
            let all_done = start_estimate.elapsed();
            stop.store(true, Ordering::Release);
            for w in workers {
                match w.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("worker: {e:#}"),
                    Err(_) => eprintln!("a worker thread panicked"),
                }
            }
            Ok((latency, answered, all_done))
        },
    );
    producer.close();
    let (latency, answered, all_done) = result?;
    broker.stop()?;
    let dead: BTreeSet<u64> = sms
        .dead
        .iter()
        .enumerate()
        .filter(|(_, d)| d.load(Ordering::Acquire))
        .map(|(u, _)| u as u64)
        .collect();
    let side = side_effects.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((
        ModeResults {
            mode: "levee",
            user_latency_us: LatencyUs::from_histogram(&latency),
            side_effect_latency_us: LatencyUs::from_histogram(&side),
            answered_per_s: report::per_s(args.users, answered),
            total_s: report::round2(all_done.as_secs_f64()),
            sms: sms.outcome(),
            gift: gift.outcome(),
        },
        dead,
        vec![("levee-user", latency), ("levee-side-effects", side)],
    ))
}

fn bar_settle(len: u64) -> indicatif::ProgressBar {
    bar(len, "levee side effects")
}

fn describe(o: &EffectOutcome, gave_up: &str) -> String {
    format!(
        "{} done ({} after a retry), {} {gave_up}, {} duplicates, {} unaccounted",
        o.done, o.done_after_retry, o.given_up, o.duplicates, o.unaccounted
    )
}

/// Runs both modes and compares them.
pub fn run(args: RegistrationArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.rate == 0 {
        bail!("--users and --rate must be at least 1");
    }
    let failures = Failures::new(&args);
    let (sync, sync_failed, mut histograms) = synchronous(&args, failures)?;
    let (levee, levee_dead, more) = through_levee(&args, failures)?;
    histograms.extend(more);
    println!(
        "registration: {} users at {}/s, {} handlers; register {} ms, SMS {} ms, gift {} ms; {:.0}% of attempts fail, {:.1}% of numbers rejected; {} attempts",
        args.users,
        args.rate,
        args.handlers,
        args.register_ms,
        args.sms_ms,
        args.gift_ms,
        args.failure_rate * 100.0,
        args.rejected_rate * 100.0,
        args.max_attempts
    );
    for (r, gave_up) in [(&sync, "given up"), (&levee, "dead-lettered")] {
        report::print_latency(&format!("{} user sees", r.mode), r.user_latency_us.as_ref());
        if r.side_effect_latency_us.is_some() {
            report::print_latency(
                &format!("{} side effect done", r.mode),
                r.side_effect_latency_us.as_ref(),
            );
        }
        println!(
            "  {:<22} answered {:.0}/s; all side effects settled after {:.2} s",
            r.mode, r.answered_per_s, r.total_s
        );
        println!("  {:<22} sms:  {}", "", describe(&r.sms, gave_up));
        println!("  {:<22} gift: {}", "", describe(&r.gift, gave_up));
    }
    let same_failures = sync_failed == levee_dead;
    println!(
        "  the users whose SMS failed for good are {} in both modes ({} synchronous, {} dead-lettered)",
        if same_failures { "the same" } else { "NOT the same" },
        sync_failed.len(),
        levee_dead.len()
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&RegistrationReport {
            scenario: "registration",
            config: &args,
            results: RegistrationResults {
                synchronous: &sync,
                levee: &levee,
                same_failures,
            },
        })?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    report::write_histograms(args.hgrm.as_deref(), &histograms)?;
    if let Some(path) = &args.plot {
        let series: Vec<(&str, &Histogram<u64>)> = histograms
            .iter()
            .map(|(name, h)| {
                let label = match *name {
                    "synchronous-user" => "synchronous: the user waits",
                    "levee-user" => "through Levee: the user waits",
                    _ => "through Levee: side effect done",
                };
                (label, h)
            })
            .collect();
        crate::plot::percentiles(
            path,
            &format!(
                "registration: {} users at {}/s; register {} ms, SMS {} ms, gift {} ms, {:.0}% of attempts fail",
                args.users, args.rate, args.register_ms, args.sms_ms, args.gift_ms, args.failure_rate * 100.0
            ),
            &series,
        )?;
        eprintln!("plot written to {}", path.display());
    }
    let mut broken = Vec::new();
    for (what, o) in [("sms", &levee.sms), ("gift", &levee.gift)] {
        if o.unaccounted > 0 || o.duplicates > 0 {
            broken.push(format!(
                "{what}: {} unaccounted, {} duplicates",
                o.unaccounted, o.duplicates
            ));
        }
    }
    if !same_failures {
        broken.push("the failed SMS differ between the modes".into());
    }
    if levee.gift.given_up != sync.gift.given_up || levee.sms.done != sync.sms.done {
        broken.push(format!(
            "outcomes differ: sms done {} vs {}, gifts given up {} vs {}",
            sync.sms.done, levee.sms.done, sync.gift.given_up, levee.gift.given_up
        ));
    }
    if !broken.is_empty() {
        bail!("side effects not accounted for: {}", broken.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_same_triple_failures_should_repeat_and_rejected_numbers_always_fail() {
        let f = Failures {
            rate: 0.3,
            rejected_every: 100,
        };
        let fails: Vec<bool> = (0..1000)
            .map(|u| f.fails(Effect::Gift, u, 1).is_some())
            .collect();
        let again: Vec<bool> = (0..1000)
            .map(|u| f.fails(Effect::Gift, u, 1).is_some())
            .collect();
        assert_eq!(fails, again);
        let share = fails.iter().filter(|&&x| x).count();
        assert!((200..400).contains(&share), "{share}");
        for attempt in 1..5 {
            assert!(f.fails(Effect::Sms, 107, attempt).is_some());
        }
    }
}
