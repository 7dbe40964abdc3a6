//! The bench runner behind `shmproc bench`.
//!
//! A *case* is one (scenario, transport) pair and a function that measures it
//! and returns an [`Outcome`]. Each area of shmproc contributes its cases from
//! its own file (`baselines.rs`, `sync.rs`, `queue.rs`, `pipe.rs`,
//! `process.rs`); [`all_cases`] gathers them in the order they are printed.
//!
//! Conventions every case follows:
//! * Two-process cases fork with [`os::fork_child`], parent pinned to
//!   `cfg.parent_cpu`, child to `cfg.child_cpu` (None where the machine has one CPU).
//! * Ping-pong cases report the median and p99 of per-round-trip samples
//!   (metric `rtt_ns`); throughput cases report the median over runs, p99 None.
//! * `cfg.quick` shrinks the work so that the whole quick run takes under 15 s.
//! * Every wait on the other process is bounded; a stuck child is killed and
//!   the case returns `Err`.

pub mod os;
mod pipe;

use std::fmt;

/// What a figure measures (the `metric` field of the JSON output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Round-trip time in nanoseconds (lower is better).
    RttNs,
    /// Messages per second.
    MsgsPerS,
    /// Bytes per second.
    BytesPerS,
    /// Tasks per second.
    TasksPerS,
    /// Increments per second.
    IncrPerS,
    /// Microseconds (lower is better).
    Us,
    /// Percent of one core (lower is better).
    CpuPct,
}

impl Metric {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RttNs => "rtt_ns",
            Metric::MsgsPerS => "msgs_per_s",
            Metric::BytesPerS => "bytes_per_s",
            Metric::TasksPerS => "tasks_per_s",
            Metric::IncrPerS => "incr_per_s",
            Metric::Us => "us",
            Metric::CpuPct => "cpu_pct",
        }
    }

    /// Whether a smaller figure is better.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::RttNs | Metric::Us | Metric::CpuPct)
    }
}

/// The result of measuring one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was measured.
    pub metric: Metric,
    /// Median figure.
    pub median: f64,
    /// 99th percentile, where samples are per operation.
    pub p99: Option<f64>,
    /// Number of runs (or samples) behind the median.
    pub runs: usize,
}

/// Settings shared by every case in one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick`: less work per case.
    pub quick: bool,
    /// CPU for the parent process (None: do not pin).
    pub parent_cpu: Option<usize>,
    /// CPU for the child process (None: do not pin).
    pub child_cpu: Option<usize>,
}

/// One (scenario, transport) pair.
pub struct Case {
    /// Scenario name, e.g. `pingpong-8B`.
    pub scenario: &'static str,
    /// Transport name, e.g. `os-pipe`.
    pub transport: &'static str,
    /// Measures it.
    pub run: fn(&Config) -> Result<Outcome, String>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Case({}/{})", self.scenario, self.transport)
    }
}

/// Every case, in print order.
pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Each area appends its cases here, e.g. `cases.extend(queue::cases());`.
    cases.extend(pipe::cases());
    cases
}

/// Median and p99 of `samples` (sorted in place). Empty input gives zeros.
pub fn median_p99(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.99))
}

/// Median of per-run figures, as an [`Outcome`] without p99.
pub fn throughput(metric: Metric, mut per_run: Vec<f64>) -> Outcome {
    let runs = per_run.len();
    let (median, _) = median_p99(&mut per_run);
    Outcome { metric, median, p99: None, runs }
}

/// Median and p99 of per-operation samples, as an [`Outcome`].
pub fn latency(metric: Metric, mut samples: Vec<f64>) -> Outcome {
    let runs = samples.len();
    let (median, p99) = median_p99(&mut samples);
    Outcome { metric, median, p99: Some(p99), runs }
}
