//! Charts drawn with `plotters` on its bitmap backend: the training curves of one or
//! more runs ([`plot_runs`]: total loss, MIM loss, MIM accuracy, enhancer loss,
//! replaced fraction, learning rate against the step, one colour per run) and the
//! codebook-usage histogram of a tokenizer ([`usage_histogram`]).

use super::text::Canvas;
use super::{err, font};
use crate::error::Result;
use crate::train::MetricsRecord;
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Run colours, in order (colour-blind-safe Okabe–Ito).
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

fn fail(e: impl std::fmt::Display) -> crate::Error {
    err(format!("cannot draw the chart: {e}"))
}

/// One panel: which value, its title, whether its axis is logarithmic.
struct Panel {
    title: &'static str,
    value: fn(&MetricsRecord) -> f64,
    log: bool,
}

const PANELS: [Panel; 6] = [
    Panel { title: "total loss", value: |r| r.loss, log: false },
    Panel { title: "MIM loss (generator)", value: |r| r.mim_loss, log: false },
    Panel { title: "MIM accuracy", value: |r| r.mim_acc, log: false },
    Panel { title: "enhancer loss", value: |r| r.enh_loss, log: false },
    Panel { title: "replaced fraction", value: |r| r.replaced_frac, log: false },
    Panel { title: "learning rate", value: |r| r.lr, log: true },
];

/// The curves of `runs` (a name and the lines of its `metrics.jsonl` each) as a
/// `width × height` picture of six panels, three by two.
pub fn plot_runs(runs: &[(String, Vec<MetricsRecord>)], width: u32, height: u32) -> Result<RgbImage> {
    if runs.is_empty() || runs.iter().all(|(_, r)| r.is_empty()) {
        return Err(err("no metrics to plot"));
    }
    if !(300..=10_000).contains(&width) || !(200..=10_000).contains(&height) {
        return Err(err(format!("a chart of {width}×{height} px: width 300 to 10000, height 200 to 10000")));
    }
    let family = font()?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = Canvas::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let areas = root.split_evenly((2, 3));
        for (i, (area, panel)) in areas.iter().zip(PANELS.iter()).enumerate() {
            draw_panel(area, panel, runs, family, i == 0)?;
        }
        root.present().map_err(fail)?;
    }
    RgbImage::from_raw(width, height, buf).ok_or_else(|| err("chart buffer size"))
}

fn draw_panel(
    area: &DrawingArea<Canvas<'_>, Shift>,
    panel: &Panel,
    runs: &[(String, Vec<MetricsRecord>)],
    family: &str,
    legend: bool,
) -> Result<()> {
    let points = |recs: &[MetricsRecord]| -> Vec<(f64, f64)> {
        recs.iter()
            .map(|r| (r.step as f64, (panel.value)(r)))
            .filter(|&(_, v)| v.is_finite() && (!panel.log || v > 0.0))
            .collect()
    };
    let all: Vec<(f64, f64)> = runs.iter().flat_map(|(_, r)| points(r)).collect();
    let (x0, x1) = span(all.iter().map(|p| p.0), false);
    let (y0, y1) = span(all.iter().map(|p| p.1), panel.log);
    let mut chart = ChartBuilder::on(area);
    chart.caption(panel.title, (family, 16)).margin(8).x_label_area_size(36).y_label_area_size(58);
    let label_style = (family, 12).into_font();
    macro_rules! body {
        ($chart:expr, $yfmt:expr) => {{
            let mut c = $chart;
            c.configure_mesh()
                .x_desc("step")
                .label_style(label_style.clone())
                .axis_desc_style(label_style.clone())
                .bold_line_style(RGBColor(225, 225, 225))
                .light_line_style(WHITE)
                .y_label_formatter(&$yfmt)
                .x_label_formatter(&|v: &f64| format!("{v:.0}"))
                .draw()
                .map_err(fail)?;
            for (k, (name, recs)) in runs.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                let s = c.draw_series(LineSeries::new(points(recs), color.stroke_width(2))).map_err(fail)?;
                if legend {
                    s.label(name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                }
            }
            if legend {
                c.configure_series_labels()
                    .label_font(label_style.clone())
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(180, 180, 180))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(fail)?;
            }
        }};
    }
    if panel.log {
        body!(chart.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(fail)?, |v: &f64| format!("{v:.0e}"));
    } else {
        body!(chart.build_cartesian_2d(x0..x1, y0..y1).map_err(fail)?, |v: &f64| short(*v));
    }
    Ok(())
}

/// A value range with a little room, never empty.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return if log { (1e-6, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        return (lo / 1.5, hi * 1.5);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(1e-3) };
    (lo - pad, hi + pad)
}

/// A tick label of about four significant digits.
fn short(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A bar chart of how often each code was chosen, most used first, `width × height`.
pub fn usage_histogram(counts: &[usize], caption: &str, width: u32, height: u32) -> Result<RgbImage> {
    if counts.is_empty() {
        return Err(err("an empty codebook"));
    }
    let family = font()?;
    let mut sorted = counts.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let top = sorted[0].max(1) as f64 * 1.05;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = Canvas::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let label_style = (family, 12).into_font();
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (family, 15))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..sorted.len() as f64, 0f64..top)
            .map_err(fail)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("codes, most used first")
            .y_desc("tokens")
            .label_style(label_style.clone())
            .axis_desc_style(label_style)
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(WHITE)
            .x_label_formatter(&|v: &f64| format!("{v:.0}"))
            .y_label_formatter(&|v: &f64| format!("{v:.0}"))
            .draw()
            .map_err(fail)?;
        let bar = COLORS[0];
        chart
            .draw_series(
                sorted
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(i, &c)| Rectangle::new([(i as f64, 0.0), (i as f64 + 1.0, c as f64)], bar.filled())),
            )
            .map_err(fail)?;
        root.present().map_err(fail)?;
    }
    RgbImage::from_raw(width, height, buf).ok_or_else(|| err("chart buffer size"))
}
