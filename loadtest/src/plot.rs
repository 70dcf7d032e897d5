//! SVG plots of a run's timeline (plotters): what a person looks at to see the peak being shaved.

use std::path::Path;

use anyhow::Context;
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

use hdrhistogram::Histogram;

use crate::flash_sale::{FlashSaleArgs, FlashSaleResults};

/// One colour per target, in run order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn to_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// A solid line with its legend entry.
fn line<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: impl IntoIterator<Item = (f64, f64)>,
    colour: RGBColor,
    label: String,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(2)))
        .map_err(to_err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    Ok(())
}

/// The legend box, at `at`.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(to_err)
}

/// Three panels over the same time axis: inbound (acknowledged) and drain (processed) rates on a
/// log scale, the backlog between them, and the server's RssAnon — one colour per target, inbound
/// solid and drain dashed.
pub fn flash_sale(
    path: &Path,
    runs: &[FlashSaleResults],
    args: &FlashSaleArgs,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(to_err)?;
    let title = format!(
        "flash sale: {} users over {} ms, {} in stock, {} workers x {} ms, acks {}",
        args.users,
        args.burst_ms,
        args.stock,
        args.workers,
        args.process_ms,
        format!("{:?}", args.acks).to_lowercase()
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(to_err)?;
    let panels = root.split_evenly((3, 1));
    let t_max = runs
        .iter()
        .flat_map(|r| r.timeline.last().map(|s| s.t_s))
        .fold(1.0f64, f64::max);
    let colour = |i: usize| COLOURS[i % COLOURS.len()];
    // Rates averaged over the last second: workers that each finish an item every 500 ms would
    // otherwise draw a comb of 0s and peaks at a 100 ms sampling interval.
    let window = (1000 / args.sample_ms.max(1)).max(1) as usize;
    let smooth = |values: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        (0..values.len())
            .map(|i| {
                let from = i.saturating_sub(window - 1);
                let n = (i - from + 1) as f64;
                let sum: f64 = values[from..=i].iter().map(|v| v.1).sum();
                (values[i].0, (sum / n).max(1.0))
            })
            .collect()
    };

    // Rates, log scale: 100 000/s in the burst and 20/s while the stock lasts share one axis.
    let rate_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .map(|s| s.inbound_per_s.max(s.drain_per_s))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(
            "orders per second, averaged over 1 s: acknowledged (solid) and processed (dashed)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (1f64..rate_max * 2.0).log_scale())
        .map_err(to_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the sale opened")
        .y_desc("orders/s")
        .draw()
        .map_err(to_err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        line(
            &mut chart,
            smooth(
                r.timeline
                    .iter()
                    .map(|s| (s.t_s, s.inbound_per_s))
                    .collect(),
            ),
            c,
            format!("{} acknowledged", r.target),
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                smooth(r.timeline.iter().map(|s| (s.t_s, s.drain_per_s)).collect()),
                6,
                4,
                c.stroke_width(2),
            ))
            .map_err(to_err)?
            .label(format!("{} processed", r.target))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    // Backlog.
    let backlog_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .map(|s| s.backlog)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "backlog: acknowledged, not yet processed",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..backlog_max * 1.1)
        .map_err(to_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the sale opened")
        .y_desc("orders")
        .draw()
        .map_err(to_err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        line(
            &mut chart,
            r.timeline.iter().map(|s| (s.t_s, s.backlog as f64)),
            c,
            r.target.to_string(),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    // The server's memory.
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let rss_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .filter_map(|s| s.rss_anon_bytes)
        .max()
        .map_or(1.0, mib)
        .max(1.0);
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("server RssAnon", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rss_max * 1.1)
        .map_err(to_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the sale opened")
        .y_desc("MiB")
        .draw()
        .map_err(to_err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        line(
            &mut chart,
            r.timeline
                .iter()
                .filter_map(|s| s.rss_anon_bytes.map(|b| (s.t_s, mib(b)))),
            c,
            r.target.to_string(),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Latency distributions (recorded in ns), HdrHistogram style: latency in ms on a log scale
/// against the percentile on a "nines" scale (50 %, 90 %, 99 %, 99.9 % equally spaced).
pub fn percentiles(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(to_err)?;
    // x = log10(1 / (1 - q)): 0 at the minimum, 1 at 90 %, 2 at 99 %, 3 at 99.9 %.
    let nines = |q: f64| (1.0 / (1.0 - q.min(0.99999))).log10();
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            h.iter_quantiles(5)
                .map(|v| {
                    (
                        nines(v.quantile_iterated_to()),
                        (v.value_iterated_to() as f64 / 1e6).max(0.001),
                    )
                })
                .collect()
        })
        .collect();
    // As many nines as the samples can tell apart.
    let most = series
        .iter()
        .map(|(_, h)| h.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let x_max = (most as f64).log10().ceil().clamp(2.0, 5.0);
    let y_max = curves
        .iter()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let y_min = curves
        .iter()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(y_max, f64::min)
        .max(0.001);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min / 2.0..y_max * 2.0).log_scale())
        .map_err(to_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            let q = 1.0 - 10f64.powf(-x);
            format!("{}%", (q * 100.0 * 1000.0).round() / 1000.0)
        })
        .draw()
        .map_err(to_err)?;
    for (i, ((name, _), curve)) in series.iter().zip(&curves).enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        line(&mut chart, curve.iter().copied(), c, name.to_string())?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Produce and consume MB/s over time, one line each.
pub fn throughput(
    path: &Path,
    title: &str,
    timeline: &[crate::throughput::RateSample],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(to_err)?;
    let t_max = timeline.last().map_or(1.0, |s| s.t_s).max(0.1);
    let y_max = timeline
        .iter()
        .map(|s| s.produce_mb_s.max(s.consume_mb_s))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max * 1.1)
        .map_err(to_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MB/s (record bytes, 10^6)")
        .draw()
        .map_err(to_err)?;
    type Metric = fn(&crate::throughput::RateSample) -> f64;
    let lines: [(&str, Metric); 2] = [
        ("produce", |s| s.produce_mb_s),
        ("consume", |s| s.consume_mb_s),
    ];
    for (i, (name, value)) in lines.into_iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        line(
            &mut chart,
            timeline.iter().map(|s| (s.t_s, value(s))),
            c,
            name.to_string(),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
