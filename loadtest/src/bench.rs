//! Pure pieces of the relay benchmark (`sv-bench-relay`): the zero-loss rate search, CPU
//! accounting from `/proc`, the summary and the latency plot.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("/proc/stat has no aggregate cpu line")]
    NoCpuLine,
    #[error("cannot parse {what}: {text:?}")]
    Parse { what: &'static str, text: String },
    #[error("plot: {0}")]
    Plot(String),
}

/// Bounded search for the highest offered rate with no loss: doubling from `start` until a loss
/// (or `max`), then bisection (geometric) between the best lossless and the lowest lossy rate
/// until they are within `resolution`, at most `max_steps` trials in all. A loss at `start` halves
/// down to `min`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateSearch {
    pub start: f64,
    pub min: f64,
    pub max: f64,
    /// Relative gap (0.05 = 5 %) at which bisection stops.
    pub resolution: f64,
    pub max_steps: u32,
    /// Best lossless rate so far.
    pub best_ok: Option<f64>,
    /// Lowest lossy rate so far.
    pub lowest_bad: Option<f64>,
    /// Trials so far: (offered pps, lossless).
    pub trials: Vec<(f64, bool)>,
}

impl RateSearch {
    #[must_use]
    pub fn new(start: f64, min: f64, max: f64, resolution: f64, max_steps: u32) -> Self {
        Self {
            start: start.clamp(min, max),
            min,
            max,
            resolution: resolution.max(0.001),
            max_steps,
            best_ok: None,
            lowest_bad: None,
            trials: Vec::new(),
        }
    }

    /// The next rate to try, or None when the search is over.
    #[must_use]
    pub fn next_rate(&self) -> Option<f64> {
        if self.trials.len() >= self.max_steps as usize {
            return None;
        }
        match (self.best_ok, self.lowest_bad) {
            (None, None) => Some(self.start),
            (Some(ok), None) => {
                if ok >= self.max {
                    None
                } else {
                    Some((ok * 2.0).min(self.max))
                }
            }
            (None, Some(bad)) => {
                let r = bad / 2.0;
                (r >= self.min).then_some(r)
            }
            (Some(ok), Some(bad)) => {
                if bad <= ok * (1.0 + self.resolution) {
                    None
                } else {
                    Some((ok * bad).sqrt())
                }
            }
        }
    }

    /// Records the outcome of a trial at `rate`.
    pub fn record(&mut self, rate: f64, lossless: bool) {
        self.trials.push((rate, lossless));
        if lossless {
            if self.best_ok.is_none_or(|b| rate > b) {
                self.best_ok = Some(rate);
            }
        } else if self.lowest_bad.is_none_or(|b| rate < b) {
            self.lowest_bad = Some(rate);
        }
    }
}

/// Aggregate CPU times from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the `cpu  ...` line of `/proc/stat`.
    pub fn parse_proc_stat(text: &str) -> Result<Self, BenchError> {
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or(BenchError::NoCpuLine)?;
        let nums: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| {
                f.parse().map_err(|_| BenchError::Parse {
                    what: "/proc/stat",
                    text: line.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        let at = |i: usize| nums.get(i).copied().unwrap_or(0);
        if nums.len() < 4 {
            return Err(BenchError::Parse {
                what: "/proc/stat",
                text: line.to_owned(),
            });
        }
        Ok(Self {
            user: at(0),
            nice: at(1),
            system: at(2),
            idle: at(3),
            iowait: at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
        })
    }

    /// Ticks spent not idle (guest time is already inside user).
    #[must_use]
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    #[must_use]
    pub fn delta(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// utime + stime (ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_pid_cpu_ticks(text: &str) -> Result<u64, BenchError> {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let bad = || BenchError::Parse {
        what: "/proc/<pid>/stat",
        text: text.chars().take(120).collect(),
    };
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let get = |n: usize| -> Result<u64, BenchError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    Ok(get(14)? + get(15)?)
}

/// CPU cost of relaying, for one measurement window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuWindow {
    pub window_s: f64,
    /// Whole-system busy CPU time (all CPUs) in the window, ns.
    pub system_busy_ns: f64,
    /// Of which softirq (where XDP and the veth/UDP receive paths run), ns.
    pub softirq_ns: f64,
    /// CPU time of the generator processes (userspace sender), ns.
    pub generator_ns: f64,
    /// CPU time of the relay process (rtpengine / sipveil daemon), ns; 0 for none.
    pub relay_process_ns: f64,
    /// Idle-machine baseline busy time for the same window length, ns.
    pub baseline_ns: f64,
    /// Packets relayed (counted at the receiver) in the window.
    pub packets: u64,
}

impl CpuWindow {
    /// (system busy − generator − baseline) ÷ packets: the whole-system figure. None when nothing
    /// was relayed or the other load on the machine (baseline) swamps the window.
    #[must_use]
    pub fn ns_per_packet(&self) -> Option<f64> {
        let net = self.system_busy_ns - self.generator_ns - self.baseline_ns;
        (self.packets > 0 && net > 0.0).then(|| net / self.packets as f64)
    }

    /// (softirq + relay process) ÷ packets: the attributed figure, far less sensitive to other
    /// load on the machine.
    #[must_use]
    pub fn attributed_ns_per_packet(&self) -> Option<f64> {
        (self.packets > 0).then(|| (self.softirq_ns + self.relay_process_ns) / self.packets as f64)
    }
}

/// `a ÷ b` when both exist and b is non-zero.
#[must_use]
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Plots latency-by-percentile curves (one per system) as SVG, x on the usual HdrHistogram
/// "1/(1-p)" log scale (labels 50 %, 90 %, 99 %, 99.9 %, ...), y in µs (log). The histograms hold
/// nanoseconds.
pub fn plot_latency_svg(
    path: &Path,
    title: &str,
    series: &[(String, Histogram<u64>)],
) -> Result<(), BenchError> {
    plot_percentiles_svg(
        path,
        title,
        &PercentileAxes {
            y_desc: "one-way latency (µs)",
            decades: 5.0,
            floor_us: 0.001,
        },
        series,
    )
}

/// What differs between percentile plots: the y axis' name, how many "nines" the x axis shows
/// (4.0: up to 99.99 %) and the smallest value drawn (µs; the y axis is logarithmic).
#[derive(Clone, Copy, Debug)]
pub struct PercentileAxes<'a> {
    pub y_desc: &'a str,
    pub decades: f64,
    pub floor_us: f64,
}

/// Percentile curves of nanosecond histograms as SVG (see [`plot_latency_svg`]).
pub fn plot_percentiles_svg(
    path: &Path,
    title: &str,
    axes: &PercentileAxes<'_>,
    series: &[(String, Histogram<u64>)],
) -> Result<(), BenchError> {
    use plotters::prelude::*;

    let perr = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
    let points: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let mut pts = Vec::new();
            // x = log10(1/(1-p)): 0 is the median's neighbourhood, 3 is 99.9 %.
            let mut x = 0.0f64;
            while x <= axes.decades {
                let p = 1.0 - 10f64.powf(-x);
                let v = h.value_at_quantile(p.min(1.0)) as f64 / 1000.0;
                pts.push((x, v.max(axes.floor_us)));
                x += 0.05;
            }
            (name.clone(), pts)
        })
        .collect();
    let ys = || points.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let ymax = ys().fold(1.0f64, f64::max) * 1.3;
    let ymin = ys()
        .fold(f64::INFINITY, f64::min)
        .clamp(axes.floor_us.max(0.1), ymax / 10.0)
        * 0.7;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..axes.decades, (ymin..ymax).log_scale())
        .map_err(|e| perr(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(axes.y_desc)
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let mut s = String::new();
            let _ = if p >= 99.99 {
                write!(s, "{p:.3}%")
            } else if p >= 99.0 {
                write!(s, "{p:.1}%")
            } else {
                write!(s, "{p:.0}%")
            };
            s
        })
        .draw()
        .map_err(|e| perr(&e))?;
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    for (i, (name, pts)) in points.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| perr(&e))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| perr(&e))?;
    root.present().map_err(|e| perr(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_total_histogram;

    fn run_search(threshold: f64) -> RateSearch {
        let mut s = RateSearch::new(10_000.0, 1_000.0, 4_000_000.0, 0.05, 30);
        while let Some(r) = s.next_rate() {
            s.record(r, r <= threshold);
        }
        s
    }

    #[test]
    fn search_converges_below_the_threshold() {
        let s = run_search(123_456.0);
        let ok = s.best_ok.unwrap_or(0.0);
        let bad = s.lowest_bad.unwrap_or(f64::INFINITY);
        assert!(ok <= 123_456.0 && bad > 123_456.0);
        assert!(bad <= ok * 1.05, "{ok} {bad}");
        assert!(s.trials.len() <= 30);
    }

    #[test]
    fn search_stops_at_max_and_min() {
        let s = run_search(1e9);
        assert_eq!(s.best_ok, Some(4_000_000.0));
        assert!(s.lowest_bad.is_none());
        let s = run_search(10.0);
        assert!(s.best_ok.is_none());
        assert!(s.trials.iter().all(|&(r, _)| r >= 1_000.0));
    }

    #[test]
    fn search_respects_step_budget() {
        let mut s = RateSearch::new(10_000.0, 1.0, 1e9, 0.0001, 5);
        while let Some(r) = s.next_rate() {
            s.record(r, r < 77_777.0);
        }
        assert_eq!(s.trials.len(), 5);
    }

    #[test]
    fn proc_stat_parses() {
        let text = "cpu  100 5 50 1000 7 1 20 3 0 0\ncpu0 50 2 25 500 3 0 10 1 0 0\nintr 1\n";
        let t = CpuTimes::parse_proc_stat(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.busy(), 100 + 5 + 50 + 1 + 20 + 3);
        assert_eq!(t.idle, 1000);
        let later = CpuTimes { user: 110, ..t };
        assert_eq!(later.delta(&t).busy(), 10);
        assert!(CpuTimes::parse_proc_stat("intr 1\n").is_err());
    }

    #[test]
    fn pid_stat_parses_names_with_spaces() {
        let text = "1234 (rtp engine) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0\n";
        assert_eq!(parse_pid_cpu_ticks(text).ok(), Some(333));
        assert!(parse_pid_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn cpu_window_figures() {
        let w = CpuWindow {
            window_s: 1.0,
            system_busy_ns: 1_000_000.0,
            softirq_ns: 200_000.0,
            generator_ns: 300_000.0,
            relay_process_ns: 100_000.0,
            baseline_ns: 100_000.0,
            packets: 1000,
        };
        assert_eq!(w.ns_per_packet(), Some(600.0));
        assert_eq!(w.attributed_ns_per_packet(), Some(300.0));
        assert_eq!(CpuWindow::default().ns_per_packet(), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn plot_writes_an_svg() {
        let mut h = new_total_histogram();
        for v in 1..1000u64 {
            h.saturating_record(v * 100);
        }
        let dir = std::env::temp_dir().join(format!("sv-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("latency.svg");
        plot_latency_svg(&path, "test", &[("sys".into(), h)]).unwrap_or_else(|e| panic!("{e}"));
        let svg = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(svg.contains("<svg") && svg.contains("sys"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
