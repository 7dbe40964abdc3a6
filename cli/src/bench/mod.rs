//! The bench runner behind `shmproc bench`.
//!
//! A *case* is one (scenario, transport) pair and a function that measures it
//! and returns an [`Outcome`]. Each area of shmproc contributes its cases from
//! its own file (`baselines.rs`, `sync.rs`, `queue.rs`, `pipe.rs`,
//! `process.rs`); [`all_cases`] gathers them in the order they are printed.
//!
//! Conventions every case follows:
//! * Two-process cases fork with [`os::fork_child`] (the library's
//!   `Process::closure`, whose child role is a `'static` closure owning clones
//!   of what it shares), parent pinned to `cfg.parent_cpu`, child to
//!   `cfg.child_cpu` (None where the machine has one CPU).
//! * Ping-pong cases report the median and p99 of per-round-trip samples
//!   (metric `rtt_ns`); throughput cases report the median over runs, p99 None.
//! * `cfg.quick` shrinks the work so that the whole quick run takes under 15 s.
//! * Every wait on the other process is bounded; a stuck child is killed and
//!   the case returns `Err`. [`os::watched`] kills a child that a blocking
//!   `read`/`write` of the parent waits on; spin loops check
//!   [`Config::stall_limit`]; futex waits take a timeout.
//!
//! Time budget: the quick run of every case together must stay under 15 s
//! and the full run under 60 s, for about 35 cases. Use [`Samples`] (ping-pong:
//! samples for [`Config::latency_time`], 0.25 s quick / 1 s full) and
//! [`Windows`] (throughput: one warm-up window and [`Config::windows`] measured
//! windows of [`Config::window`], 0.24 s quick / 1 s full), and a case costs
//! what the baselines cost. The runner prints each case's time on stderr.

pub mod baselines;
mod manager;
pub mod os;
mod pipe;
mod pool;
pub mod process;
mod queue;
pub mod report;
mod sync;

use std::fmt;
use std::time::{Duration, Instant};

/// What a figure measures (the `metric` field of the JSON output).
#[allow(dead_code)] // some variants are only used by other areas' cases
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

impl Config {
    /// The placement for this machine: parent on the first allowed CPU, child
    /// on the second (both None, unpinned, where only one CPU is allowed).
    pub fn for_machine(quick: bool) -> Config {
        let cpus = os::allowed_cpus();
        match cpus.as_slice() {
            [a, b, ..] => Config { quick, parent_cpu: Some(*a), child_cpu: Some(*b) },
            _ => Config { quick, parent_cpu: None, child_cpu: None },
        }
    }

    /// How long a ping-pong case samples round trips (warm-up included):
    /// 0.25 s quick, 1 s otherwise.
    pub fn latency_time(&self) -> Duration {
        if self.quick {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(1000)
        }
    }

    /// Warm-up of a ping-pong case (samples before it are dropped).
    pub fn latency_warmup(&self) -> Duration {
        if self.quick {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(100)
        }
    }

    /// Length of one throughput window (one "run"): 40 ms quick, 100 ms otherwise.
    pub fn window(&self) -> Duration {
        if self.quick {
            Duration::from_millis(40)
        } else {
            Duration::from_millis(100)
        }
    }

    /// Number of measured throughput windows after one warm-up window: 5 quick, 9 otherwise.
    pub fn windows(&self) -> usize {
        if self.quick {
            5
        } else {
            9
        }
    }

    /// How long a case waits without progress before it gives up on its peer.
    pub fn stall_limit(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// A hard limit on a whole two-process case, after which the child is killed.
    pub fn case_limit(&self) -> Duration {
        Duration::from_secs(20)
    }
}

/// Collects per-operation latency samples for a fixed time, dropping a warm-up.
///
/// Call [`Samples::tick`] once at the end of every operation: the sample is
/// the time since the previous tick (one clock read per operation).
#[derive(Debug)]
pub struct Samples {
    samples: Vec<f64>,
    prev: Instant,
    warm_until: Instant,
    end: Instant,
}

/// Most samples one latency case keeps (16 MiB of f64).
const MAX_SAMPLES: usize = 1 << 21;

impl Samples {
    /// Starts the clock now, with `cfg`'s warm-up and sampling time.
    pub fn start(cfg: &Config) -> Samples {
        let now = Instant::now();
        Samples {
            samples: Vec::with_capacity(if cfg.quick { 1 << 18 } else { 1 << 20 }),
            prev: now,
            warm_until: now + cfg.latency_warmup(),
            end: now + cfg.latency_time(),
        }
    }

    /// Marks the end of one operation; returns false once enough is sampled.
    #[inline]
    pub fn tick(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.warm_until {
            self.samples.push(now.duration_since(self.prev).as_nanos() as f64);
        }
        self.prev = now;
        now < self.end && self.samples.len() < MAX_SAMPLES
    }

    /// The median and p99 of the samples.
    pub fn finish(self, metric: Metric) -> Result<Outcome, String> {
        if self.samples.is_empty() {
            return Err("no samples were taken".into());
        }
        Ok(latency(metric, self.samples))
    }
}

/// Measures a rate over consecutive fixed-length windows after a warm-up window.
///
/// Call [`Windows::observe`] with the running total of units moved (messages or
/// bytes) every so often; each full window becomes one run.
#[derive(Debug)]
pub struct Windows {
    window: Duration,
    want: usize,
    started: Instant,
    base: u64,
    warm: bool,
    rates: Vec<f64>,
}

impl Windows {
    /// Starts the warm-up window now.
    pub fn start(cfg: &Config) -> Windows {
        Windows {
            window: cfg.window(),
            want: cfg.windows(),
            started: Instant::now(),
            base: 0,
            warm: false,
            rates: Vec::new(),
        }
    }

    /// Records that `total` units have moved so far; returns false once every
    /// window is measured.
    #[inline]
    pub fn observe(&mut self, total: u64) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        if elapsed >= self.window {
            if self.warm {
                self.rates.push(total.saturating_sub(self.base) as f64 / elapsed.as_secs_f64());
            }
            self.warm = true;
            self.started = now;
            self.base = total;
        }
        self.rates.len() < self.want
    }

    /// The median rate over the windows.
    pub fn finish(self, metric: Metric) -> Result<Outcome, String> {
        if self.rates.is_empty() {
            return Err("no window was completed".into());
        }
        Ok(throughput(metric, self.rates))
    }
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
    cases.extend(baselines::cases());
    cases.extend(sync::cases());
    cases.extend(process::cases());
    cases.extend(queue::cases());
    cases.extend(pipe::cases());
    cases.extend(manager::cases());
    cases.extend(pool::cases());
    // Print each scenario's rows together (baseline rows first, as added),
    // in a fixed scenario order; the sort is stable.
    const ORDER: &[&str] = &[
        "pingpong-8B",
        "stream-8B",
        "stream-64KiB",
        "stream-mpmc",
        "idle-cpu",
        "lock-incr",
        "event-pingpong",
        "spawn-join",
    ];
    cases.sort_by_key(|c| ORDER.iter().position(|s| *s == c.scenario).unwrap_or(ORDER.len()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_drop_the_warmup_and_stop_in_time() {
        let cfg = Config { quick: true, parent_cpu: None, child_cpu: None };
        let start = Instant::now();
        let mut s = Samples::start(&cfg);
        let mut ticks = 0u64;
        while s.tick() {
            ticks += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(start.elapsed() >= cfg.latency_time());
        let o = s.finish(Metric::RttNs).unwrap();
        assert!(o.runs > 0 && (o.runs as u64) < ticks, "warm-up samples dropped: {} of {ticks}", o.runs);
        assert!(o.median >= 200_000.0, "each sample spans a sleep of 200 us: {}", o.median);
        assert!(o.p99.unwrap() >= o.median);
    }

    #[test]
    fn windows_give_one_rate_per_window() {
        let cfg = Config { quick: true, parent_cpu: None, child_cpu: None };
        let mut w = Windows::start(&cfg);
        let mut total = 0u64;
        while w.observe(total) {
            total += 1000;
            std::thread::sleep(Duration::from_millis(1));
        }
        let o = w.finish(Metric::MsgsPerS).unwrap();
        assert_eq!(o.runs, cfg.windows());
        assert!(o.p99.is_none());
        // 1000 units per (1 ms sleep + overhead): at most 1 M/s.
        assert!(o.median > 0.0 && o.median <= 1.0e6, "{}", o.median);
    }
}
