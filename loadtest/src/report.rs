//! Histograms, rates and the JSON report shared by every scenario.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds: one minute, in nanoseconds. Larger values are clamped to it
/// (`saturating_record`), which a run that slow makes obvious anyway.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds with 3 significant digits (0.1 % resolution).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds are valid")
}

/// Records `d` in nanoseconds, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(LATENCY_NS_MAX);
    h.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
}

/// The percentiles every report prints, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Values recorded.
    pub count: u64,
}

impl LatencyUs {
    /// Summarizes `h` (recorded in ns); `None` when nothing was recorded.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<LatencyUs> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 1_000.0 * 10.0).round() / 10.0;
        Some(LatencyUs {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
            count: h.len(),
        })
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}  (µs, n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// Prints `name: summary` or `name: not measured`.
pub fn print_latency(name: &str, l: Option<&LatencyUs>) {
    match l {
        Some(l) => println!("{name:<24} {}", l.line()),
        None => println!("{name:<24} not measured"),
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        return 0.0;
    }
    round2(bytes as f64 / 1e6 / s)
}

/// Items per second.
pub fn per_s(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        return 0.0;
    }
    (count as f64 / s).round()
}

/// `a / b` rounded to three decimals, `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0)
}

/// Rounds to two decimals.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The file `--json` writes: `{"scenario", "config", "results"}`.
#[derive(Debug, Serialize)]
pub struct Report<'a, C: Serialize, R: Serialize> {
    /// `throughput` or `latency`.
    pub scenario: &'a str,
    /// The scenario's arguments, as parsed.
    pub config: &'a C,
    /// What was measured; fields not measured are `null`.
    pub results: &'a R,
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json<C: Serialize, R: Serialize>(
    path: &Path,
    report: &Report<'_, C, R>,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `h` (recorded in ns) as an HdrHistogram percentile distribution in milliseconds, the
/// text format HdrHistogram's plotters read.
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:2.12} {:10} {inverse}",
            ms(v.value_iterated_to()),
            q,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1e6,
        h.stdev() / 1e6
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(h.max()),
        h.len()
    );
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes each `(name, histogram)` as `DIR/name.hgrm` when `dir` is given.
pub fn write_histograms(
    dir: Option<&Path>,
    histograms: &[(&str, Histogram<u64>)],
) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, h) in histograms {
        write_hgrm(&dir.join(format!("{name}.hgrm")), h)?;
    }
    Ok(())
}

/// A progress bar that fills with time, for scenarios that run for a set time; it stops and
/// clears when dropped. Hidden when stderr is not a terminal.
pub struct TimedBar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl TimedBar {
    /// A bar over `total`, labelled `what`.
    pub fn start(total: Duration, what: &str) -> TimedBar {
        let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {percent}%",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let started = std::time::Instant::now();
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    bar.set_position(started.elapsed().as_millis() as u64);
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            })
            .ok();
        TimedBar { stop, ticker }
    }
}

impl Drop for TimedBar {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_recorded_values_when_summarized_should_report_microseconds() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = LatencyUs::from_histogram(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.5, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.5, "{l:?}");
    }

    #[test]
    fn given_empty_histogram_when_summarized_should_be_none() {
        assert!(LatencyUs::from_histogram(&latency_histogram()).is_none());
    }

    #[test]
    fn given_huge_duration_when_recorded_should_clamp() {
        let mut h = latency_histogram();
        record(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 1);
        assert!(h.max() >= LATENCY_NS_MAX - LATENCY_NS_MAX / 1000);
    }

    #[test]
    fn given_rates_when_computed_should_use_decimal_megabytes() {
        assert_eq!(mb_s(2_000_000, Duration::from_secs(2)), 1.0);
        assert_eq!(per_s(10, Duration::from_millis(500)), 20.0);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
