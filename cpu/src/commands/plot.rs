//! `cim plot`: training curves of one or more runs from their `metrics.jsonl`.
//!
//! ```text
//! cim plot RUN_DIR [RUN_DIR...] [--out curves.png] [--width 1200] [--height 700]
//! ```
//! Six panels (total loss, MIM loss, MIM accuracy, enhancer loss, replaced fraction,
//! learning rate on a log axis) against the step, one colour per run, drawn by
//! `cim_core::visual::plot_runs`. Every failure is a one-line error.

use cim_core::train::{MetricsRecord, RunDir};
use cim_core::visual;
use clap::Args;
use std::path::PathBuf;

/// The arguments of `cim plot`.
#[derive(Args, Clone, Debug)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl); several are overlaid.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// The picture (.png).
    #[arg(long, value_name = "FILE", default_value = "curves.png")]
    pub out: PathBuf,
    /// Width in pixels.
    #[arg(long, value_name = "PX", default_value_t = 1200)]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, value_name = "PX", default_value_t = 700)]
    pub height: u32,
}

/// The legend name of each run: its folder name, or the whole path where two share one.
fn names(runs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = runs
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string()))
        .collect();
    short
        .iter()
        .zip(runs)
        .map(|(n, p)| if short.iter().filter(|m| *m == n).count() > 1 { p.display().to_string() } else { n.clone() })
        .collect()
}

/// Run `cim plot`; the result is one line saying what was written.
pub fn run(a: &PlotArgs) -> Result<String, String> {
    let ext = a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("png") {
        return Err(format!("the output {} must be a .png file", a.out.display()));
    }
    let mut series: Vec<(String, Vec<MetricsRecord>)> = Vec::new();
    for (path, name) in a.runs.iter().zip(names(&a.runs)) {
        let rd = RunDir::new(path);
        if !rd.metrics_path().is_file() {
            return Err(format!("{} has no metrics.jsonl (not a run directory of cim pretrain?)", path.display()));
        }
        let m = rd.read_metrics().map_err(|e| e.to_string())?;
        if m.is_empty() {
            return Err(format!("{} has no logged steps yet", rd.metrics_path().display()));
        }
        series.push((name, m));
    }
    let img = visual::plot_runs(&series, a.width, a.height).map_err(|e| e.to_string())?;
    visual::save_png(&a.out, &img).map_err(|e| e.to_string())?;
    let steps: Vec<String> = series
        .iter()
        .map(|(n, m)| format!("{n} ({} points to step {})", m.len(), m.last().map_or(0, |r| r.step)))
        .collect();
    Ok(format!("wrote {} ({}×{} px): {}", a.out.display(), img.width(), img.height(), steps.join(", ")))
}
