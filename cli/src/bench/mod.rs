//! The bench runner behind `shmproc bench`.
//!
//! # How a ratio is measured (read this before adding a case)
//!
//! A *case* is one (scenario, transport) pair. It does not measure itself: its
//! `start` function sets the transport up (forks its child, opens its
//! channel) and hands back a [`Session`], and the runner ([`measure`]) drives
//! every session the same way:
//!
//! 1. **The drift probe**: a `raw-spin` session reads the bare atomic
//!    ping-pong between the two CPUs before the case and again after it. If
//!    the two readings differ by more than [`DRIFT_LIMIT`] (20%), the host
//!    moved the vCPUs during the case and the row is flagged as drifting.
//!    Where the case's paired baseline is `raw-spin` itself, the median of
//!    its paired blocks is a third reading, checked against the first the
//!    same way (a move and back during the case shows only there). The
//!    geometric mean of the first two is the case's *floor*: where the host
//!    had placed the CPUs. A case whose floor is more than
//!    [`PLACEMENT_LIMIT`] away from the run's usual one ran at another
//!    placement for all of it: paired, so not drifting, but its ratios hold
//!    for that placement only ([`placement_outliers`], `MOVED`).
//! 2. **Paired blocks**: the transport's session and its baseline's session
//!    (the raw floor or the peer it is judged against, [`Case::baseline`]) are
//!    both set up, warmed up for one block each, and then measured in
//!    [`Config::pairs`] pairs of short blocks ([`Config::block`]), alternating
//!    which goes first. Each pair gives one ratio `transport / baseline` (in
//!    the metric's own unit); the row reports the median of those ratios with
//!    their min and max. Both sides of a ratio ran within a few tens of
//!    milliseconds of each other, under the same placement.
//! 3. While one session runs its block, the other's children are stopped
//!    (`SIGSTOP`, then `SIGCONT` before its next block), so a spinning idle
//!    child never competes for the CPUs.
//!
//! Every figure comes from one sampler, [`Session::block`]:
//! * [`Work::RoundTrip`]: one call is one round trip; round trips are timed in
//!   batches of [`BATCH`] (the clock advances in 10 ns steps on some hosts), the
//!   first batch of every block is dropped (warm-up after `SIGCONT`), and the
//!   block's figure is the median batch mean (p99: over batch means).
//! * [`Work::Stream`]: one call moves some units and returns the running
//!   total; the first tenth of every block is warm-up, the figure is units per
//!   second over the rest. No case times process start-up: children are
//!   forked in `start`, before any block.
//! * [`Work::Sample`]: one call is one operation whose figure it returns
//!   (spawn + join); the block's figure is their median.
//! * [`Work::Block`]: the session runs a whole block itself (Python peers,
//!   whose timing happens inside Python; the `idle-cpu` waits).
//!
//! # Adding a case
//!
//! ```ignore
//! Case::new("pingpong-8B", "my-transport", Metric::RttNs, my_start)
//! // fn my_start(cfg: &Config) -> Result<Session, String>:
//! //   fork children with os::fork_child(cfg.child_cpu, ...) (pinned),
//! //   Session::new(Work::RoundTrip(Box::new(move |i| { ...one round trip... })))
//! //       .child(child).on_finish(move || { ...tell the child to exit... })
//! //       .placement(cfg.pair_placement())
//! ```
//! Add it to the area's `cases()` list; [`all_cases`] gathers them. A case
//! whose baseline is not its scenario's default names it with
//! [`Case::against`]. Every wait on another process is bounded: spin loops
//! check [`Config::stall_limit`], and the runner kills a session's children
//! when a block overruns [`Config::case_limit`] (which turns a blocked `read`
//! into EOF). `finish` (after the last block) runs the `on_finish` hook, drops
//! the work closure (closing the fds it owns) and reaps every child; a child
//! that exits non-zero fails the case.
//!
//! Time budget: about 0.3 s per case quick and 1.3 s full.

pub mod baselines;
mod manager;
pub mod os;
#[cfg(feature = "peers")]
mod peers;
mod pipe;
pub mod plot;
mod pool;
pub mod process;
mod python;
mod queue;
pub mod report;
mod sync;

use std::fmt;
use std::time::{Duration, Instant};

use os::Child;

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
    /// Median figure (over the measured blocks).
    pub median: f64,
    /// 99th percentile over per-batch samples, where there are any.
    pub p99: Option<f64>,
    /// Number of measured blocks behind the median.
    pub runs: usize,
}

/// A paired ratio `transport / baseline`: the median over the pairs of
/// blocks, and the smallest and largest of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Median of the pairwise ratios.
    pub median: f64,
    /// Smallest pairwise ratio.
    pub lo: f64,
    /// Largest pairwise ratio.
    pub hi: f64,
}

/// Everything measured for one case.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The transport's own figures.
    pub outcome: Outcome,
    /// The transport it was paired with (None: none, or it is the baseline).
    pub baseline: Option<&'static str>,
    /// The paired ratio (`Some(1, 1, 1)` for a baseline's own row).
    pub ratio: Option<Ratio>,
    /// raw-spin after the case / raw-spin before it (None: not probed).
    pub drift: Option<f64>,
    /// The probe's raw-spin round trip around the case, in ns (the geometric
    /// mean of its readings before and after; None: not probed): where the
    /// host had placed the two CPUs (see [`placement_outliers`]).
    pub floor: Option<f64>,
    /// Where the transport's processes ran.
    pub placement: String,
}

/// A drift probe reading that moved by more than this fraction flags the case.
pub const DRIFT_LIMIT: f64 = 0.20;

/// A case whose floor is more than this factor away from the run's median
/// floor ran at another placement (see [`placement_outliers`]).
pub const PLACEMENT_LIMIT: f64 = 1.5;

/// A paired row whose largest pairwise ratio is more than this factor above
/// its smallest is unsteady (see [`Measured::unsteady`]).
pub const UNSTEADY_LIMIT: f64 = 4.0;

/// The cases (indices into `floors`, one per row, None: not probed) that ran
/// at another placement than most of the run: their floor (the raw-spin
/// round trip around the case) is more than [`PLACEMENT_LIMIT`] times away
/// from the median floor of the run. A row's ratio is paired, so it holds for
/// the placement it ran at, but ratios move with the placement (two CPUs
/// sharing a cache against two that do not: raw-spin 70 ns against 370 ns on
/// the machines we measure on, and a pipe round trip 2.2x against 1.3x of
/// it), so such a row is not comparable with the rest of the run, nor with
/// other runs at the usual placement. Only a strict minority is named (a
/// run split half and half has no usual placement), and nothing when fewer
/// than three floors are known (finite, above zero).
pub fn placement_outliers(floors: &[Option<f64>]) -> Vec<usize> {
    let Some(usual) = usual_floor(floors) else {
        return Vec::new();
    };
    let away = |f: f64| f.is_finite() && f > 0.0 && (f / usual).ln().abs() > PLACEMENT_LIMIT.ln();
    let moved: Vec<usize> = floors.iter().enumerate().filter(|(_, f)| f.is_some_and(away)).map(|(i, _)| i).collect();
    let known = floors.iter().flatten().filter(|f| f.is_finite() && **f > 0.0).count();
    if moved.len() * 2 < known {
        moved
    } else {
        Vec::new()
    }
}

/// The median of the known floors (finite, above zero); None with fewer
/// than three (see [`placement_outliers`]).
pub fn usual_floor(floors: &[Option<f64>]) -> Option<f64> {
    let mut known: Vec<f64> = floors.iter().flatten().copied().filter(|f| f.is_finite() && *f > 0.0).collect();
    (known.len() >= 3).then(|| median_p99(&mut known).0)
}

impl Measured {
    /// Whether the drift probe moved by more than [`DRIFT_LIMIT`].
    pub fn drifted(&self) -> bool {
        self.drift.is_some_and(|d| !(1.0 / (1.0 + DRIFT_LIMIT)..=1.0 + DRIFT_LIMIT).contains(&d))
    }

    /// Whether the pairwise ratios of a paired row span more than
    /// [`UNSTEADY_LIMIT`] (largest over smallest): the transport's own blocks
    /// swung during the case while the floor may have held still (a peer
    /// that sometimes sleeps through a kernel wake-up and sometimes does
    /// not), so its median is no steady figure. False for a baseline's own
    /// row and for unpaired rows.
    pub fn unsteady(&self) -> bool {
        match (self.ratio, self.baseline) {
            (Some(r), Some(_)) => !(r.lo > 0.0 && r.hi / r.lo <= UNSTEADY_LIMIT),
            _ => false,
        }
    }
}

/// Settings shared by every case in one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick`: fewer, shorter blocks.
    pub quick: bool,
    /// CPU for the parent process (None: do not pin).
    pub parent_cpu: Option<usize>,
    /// CPU for the child process (None: do not pin).
    pub child_cpu: Option<usize>,
    /// Every CPU the run may use (peers that should use all of them, such as
    /// Python's processes, are given this set, not the parent's pin).
    pub cpus: Vec<usize>,
}

/// One (scenario, transport) pair.
pub struct Case {
    /// Scenario name, e.g. `pingpong-8B`.
    pub scenario: &'static str,
    /// Transport name, e.g. `os-pipe`.
    pub transport: &'static str,
    /// What its figure measures.
    pub metric: Metric,
    /// The transport it is paired with; None: the scenario's
    /// ([`report::baseline_for`]).
    pub baseline: Option<&'static str>,
    /// Sets the transport up.
    pub start: Start,
}

/// A case's setup function.
pub type Start = fn(&Config) -> Result<Session, String>;

impl Case {
    /// A case paired with its scenario's baseline.
    pub fn new(scenario: &'static str, transport: &'static str, metric: Metric, start: Start) -> Case {
        Case { scenario, transport, metric, baseline: None, start }
    }

    /// The same case paired with `baseline` instead.
    pub fn against(mut self, baseline: &'static str) -> Case {
        self.baseline = Some(baseline);
        self
    }

    /// The transport this case is paired with, if any (never itself).
    pub fn baseline_name(&self) -> Option<&'static str> {
        self.baseline.or_else(|| report::baseline_for(self.scenario)).filter(|b| *b != self.transport)
    }
}

impl Config {
    /// The placement for this machine: parent on the first allowed CPU, child
    /// on the second (both None, unpinned, where only one CPU is allowed).
    pub fn for_machine(quick: bool) -> Config {
        let cpus = os::allowed_cpus();
        match cpus.as_slice() {
            [a, b, ..] => Config { quick, parent_cpu: Some(*a), child_cpu: Some(*b), cpus },
            _ => Config { quick, parent_cpu: None, child_cpu: None, cpus },
        }
    }

    /// Length of one measured block: 15 ms quick, 50 ms otherwise.
    pub fn block(&self) -> Duration {
        if self.quick {
            Duration::from_millis(15)
        } else {
            Duration::from_millis(50)
        }
    }

    /// Pairs of blocks per case: 5 quick, 10 otherwise.
    pub fn pairs(&self) -> usize {
        if self.quick {
            5
        } else {
            10
        }
    }

    /// How long a spinning side waits without progress before it gives up on
    /// its peer (longer than a whole case, during which a session may stay
    /// stopped while the other runs).
    pub fn stall_limit(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// A hard limit on one block, after which the session's children are killed.
    pub fn case_limit(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// "parent CPU 0, child CPU 1" (or unpinned).
    pub fn pair_placement(&self) -> String {
        match (self.parent_cpu, self.child_cpu) {
            (Some(p), Some(c)) => format!("parent CPU {p}, child CPU {c}"),
            _ => "unpinned, one CPU".into(),
        }
    }

    /// The run's CPUs as a set, "CPUs 0-1" style.
    pub fn all_cpus_text(&self) -> String {
        let list: Vec<String> = self.cpus.iter().map(|c| c.to_string()).collect();
        format!("CPUs {{{}}}", list.join(","))
    }
}

/// What a session does in one call (see the module docs).
pub enum Work {
    /// One round trip per call; the argument numbers it (from 1, never reused).
    RoundTrip(Box<dyn FnMut(u64) -> Result<(), String>>),
    /// Moves some units, returns the running total.
    Stream(Box<dyn FnMut() -> Result<u64, String>>),
    /// One operation per call, returns its figure.
    Sample(Box<dyn FnMut() -> Result<f64, String>>),
    /// Runs a whole block of the given length, returns its figure.
    Block(Box<dyn FnMut(Duration) -> Result<f64, String>>),
}

/// A transport set up and ready to be measured in blocks.
pub struct Session {
    work: Option<Work>,
    children: Vec<Child>,
    /// Other processes the block watchdog kills (a Python script).
    watched: Vec<u32>,
    on_finish: Option<Box<dyn FnOnce()>>,
    placement: String,
    stopped: bool,
}

/// One block's figure and its per-batch samples.
#[derive(Debug, Clone, Default)]
pub struct BlockFigure {
    /// The block's figure in the case's metric.
    pub figure: f64,
    /// Batch means (round trips) or per-operation figures (samples).
    pub samples: Vec<f64>,
}

/// Round trips per timed batch.
pub const BATCH: u64 = 32;

impl Session {
    /// A session doing `work` (add its children and finish hook).
    pub fn new(work: Work) -> Session {
        Session {
            work: Some(work),
            children: Vec::new(),
            watched: Vec::new(),
            on_finish: None,
            placement: String::new(),
            stopped: false,
        }
    }

    /// Adds a child process (stopped between blocks, reaped at the end).
    pub fn child(mut self, c: Child) -> Session {
        self.children.push(c);
        self
    }

    /// Adds a process (not a [`Child`]) that the block watchdog kills when a
    /// block overruns; the caller reaps it.
    pub fn watch(mut self, pid: u32) -> Session {
        self.watched.push(pid);
        self
    }

    /// Runs `f` at the end, before the work closure is dropped and the
    /// children are reaped (tell the children to exit here).
    pub fn on_finish(mut self, f: impl FnOnce() + 'static) -> Session {
        self.on_finish = Some(Box::new(f));
        self
    }

    /// Says where the session's processes run.
    pub fn placement(mut self, p: impl Into<String>) -> Session {
        self.placement = p.into();
        self
    }

    /// Where the session's processes run.
    pub fn placement_text(&self) -> &str {
        &self.placement
    }

    /// Stops the children (`SIGSTOP`) until the next [`Session::resume`].
    pub fn pause(&mut self) {
        if !self.stopped {
            for c in &self.children {
                c.signal_stop();
            }
            self.stopped = true;
        }
    }

    /// Continues stopped children.
    pub fn resume(&mut self) {
        if self.stopped {
            for c in &self.children {
                c.signal_cont();
            }
            self.stopped = false;
        }
    }

    /// Runs one block of about `len` (see the module docs) under a watchdog
    /// that kills the children if it takes over `limit`.
    pub fn block(&mut self, len: Duration, limit: Duration) -> Result<BlockFigure, String> {
        self.resume();
        let pids: Vec<u32> = self.children.iter().map(Child::pid).chain(self.watched.iter().copied()).collect();
        let work = self.work.as_mut().ok_or("the session has finished")?;
        let (r, fired) = os::watched_pids(&pids, limit, || run_block(work, len));
        if fired {
            return Err(format!("a block took over {} s: the children were killed", limit.as_secs()));
        }
        r
    }

    /// Ends the session: continues the children, runs the finish hook, drops
    /// the work (closing what it owns) and reaps every child.
    pub fn finish(mut self) -> Result<(), String> {
        self.resume();
        if let Some(f) = self.on_finish.take() {
            f();
        }
        drop(self.work.take());
        let mut first_err = Ok(());
        for mut c in self.children.drain(..) {
            let r = match c.wait_timeout(Duration::from_secs(10)) {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("a child exited with code {code}")),
                Err(e) => Err(e),
            };
            if first_err.is_ok() {
                first_err = r;
            }
        }
        first_err
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Children left (an error path): continue them so that the kill in
        // Child's drop reaps them at once.
        self.resume();
    }
}

fn run_block(work: &mut Work, len: Duration) -> Result<BlockFigure, String> {
    let start = Instant::now();
    let end = start + len;
    match work {
        Work::RoundTrip(f) => {
            let mut samples = Vec::new();
            let mut i = 0u64;
            let mut first = true;
            loop {
                let t = Instant::now();
                for _ in 0..BATCH {
                    i += 1;
                    f(i)?;
                }
                let now = Instant::now();
                if !first {
                    samples.push(now.duration_since(t).as_nanos() as f64 / BATCH as f64);
                }
                first = false;
                if now >= end && !samples.is_empty() {
                    break;
                }
            }
            let figure = median_p99(&mut samples.clone()).0;
            Ok(BlockFigure { figure, samples })
        }
        Work::Stream(f) => {
            let warm_until = start + len / 10;
            let mut total = f()?;
            while Instant::now() < warm_until {
                total = f()?;
            }
            let (t0, base) = (Instant::now(), total);
            loop {
                total = f()?;
                let now = Instant::now();
                if now >= end && total > base {
                    let figure = (total - base) as f64 / now.duration_since(t0).as_secs_f64();
                    return Ok(BlockFigure { figure, samples: Vec::new() });
                }
            }
        }
        Work::Sample(f) => {
            let mut samples = Vec::new();
            while samples.is_empty() || Instant::now() < end {
                samples.push(f()?);
            }
            let figure = median_p99(&mut samples.clone()).0;
            Ok(BlockFigure { figure, samples })
        }
        Work::Block(f) => Ok(BlockFigure { figure: f(len)?, samples: Vec::new() }),
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Case({}/{})", self.scenario, self.transport)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({} children, {})", self.children.len(), self.placement)
    }
}

/// Removes what the cases' peers left behind (iceoryx2's files); call once
/// every case has finished.
pub fn cleanup() {
    #[cfg(feature = "peers")]
    peers::cleanup();
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
    cases.extend(python::cases());
    #[cfg(feature = "peers")]
    cases.extend(peers::cases());
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
        "pool-map-trivial",
        "pool-map-chunk1",
        "pool-start",
        "pool-map-cpu",
        "manager-dict",
        "manager-dict-tcp",
        "connection-tcp",
    ];
    cases.sort_by_key(|c| ORDER.iter().position(|s| *s == c.scenario).unwrap_or(ORDER.len()));
    cases
}

/// Measures `case` (see the module docs): the drift probe around it, and its
/// blocks paired with its baseline's (found in `all`, the baseline's own
/// setup) where it has one. `probe`: the raw-spin setup (None: no probe).
pub fn measure(case: &Case, all: &[Case], cfg: &Config, probe: Option<Start>) -> Result<Measured, String> {
    let (len, limit) = (cfg.block(), cfg.case_limit());
    let probe_start = probe;
    let mut probe = match probe {
        Some(start) => {
            let mut p = start(cfg)?;
            p.block(len, limit)?; // warm-up
            let before = p.block(len, limit)?.figure;
            p.pause();
            Some((p, before))
        }
        None => None,
    };
    let base_case = case
        .baseline_name()
        .and_then(|b| all.iter().find(|c| c.scenario == case.scenario && c.transport == b && c.metric == case.metric));
    let mut t = (case.start)(cfg)?;
    let placement = t.placement_text().to_string();
    // A baseline that cannot run here (python3 missing) leaves the row unpaired.
    let mut b = match base_case {
        Some(bc) => (bc.start)(cfg).ok(),
        None => None,
    };
    t.pause();
    // Warm-up: one block each.
    t.block(len, limit)?;
    t.pause();
    if let Some(b) = b.as_mut() {
        b.block(len, limit)?;
        b.pause();
    }
    let mut figures = Vec::new();
    let mut samples = Vec::new();
    let mut ratios = Vec::new();
    let mut base_figures = Vec::new();
    for k in 0..cfg.pairs() {
        let one = |s: &mut Session| -> Result<BlockFigure, String> {
            let f = s.block(len, limit)?;
            s.pause();
            Ok(f)
        };
        let (ft, fb) = match b.as_mut() {
            Some(b) if k % 2 == 1 => {
                let fb = one(b)?;
                (one(&mut t)?, Some(fb))
            }
            Some(b) => {
                let ft = one(&mut t)?;
                (ft, Some(one(b)?))
            }
            None => (one(&mut t)?, None),
        };
        if let Some(fb) = fb {
            if fb.figure > 0.0 {
                ratios.push(ft.figure / fb.figure);
                base_figures.push(fb.figure);
            }
        }
        figures.push(ft.figure);
        samples.extend(ft.samples);
    }
    // In the reverse order of creation: the baseline's children were forked
    // after the transport's fds were made and hold copies of them, so the
    // transport's child sees EOF (or `EPIPE`) only once they are gone.
    if let Some(b) = b {
        b.finish().map_err(|e| format!("baseline {}: {e}", base_case.map_or("", |c| c.transport)))?;
    }
    t.finish()?;
    // The probe's own setup as the paired baseline (raw-spin in a round-trip
    // scenario): its paired blocks are more readings of the same floor.
    let base_is_probe = matches!((base_case, probe_start), (Some(bc), Some(p)) if bc.start as usize == p as usize);
    let mut floor = None;
    let drift = match probe.take() {
        Some((mut p, before)) => {
            let after = p.block(len, limit)?.figure;
            p.finish()?;
            floor = Some((before * after).sqrt());
            let mut drift = after / before;
            if base_is_probe && !base_figures.is_empty() && before > 0.0 {
                // The floor read during the pairs against the one read before
                // the case: the host moved the CPUs between them if it differs
                // (e.g. onto sibling hyperthreads, where the floor drops 5x).
                let during = median_p99(&mut base_figures.clone()).0 / before;
                if during.ln().abs() > drift.ln().abs() {
                    drift = during;
                }
            }
            Some(drift)
        }
        None => None,
    };
    let runs = figures.len();
    let median = median_p99(&mut figures).0;
    let p99 = (!samples.is_empty() && case.metric == Metric::RttNs).then(|| median_p99(&mut samples).1);
    let is_baseline = report::baseline_for(case.scenario) == Some(case.transport) && case.baseline.is_none();
    let ratio = if ratios.is_empty() {
        is_baseline.then_some(Ratio { median: 1.0, lo: 1.0, hi: 1.0 })
    } else {
        let mut r = ratios.clone();
        let m = median_p99(&mut r).0;
        Some(Ratio { median: m, lo: r[0], hi: r[r.len() - 1] })
    };
    Ok(Measured {
        outcome: Outcome { metric: case.metric, median, p99, runs },
        baseline: if ratios.is_empty() { None } else { base_case.map(|c| c.transport) },
        ratio,
        drift,
        floor,
        placement,
    })
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
#[cfg(test)]
pub fn throughput(metric: Metric, mut per_run: Vec<f64>) -> Outcome {
    let runs = per_run.len();
    let (median, _) = median_p99(&mut per_run);
    Outcome { metric, median, p99: None, runs }
}

/// Median and p99 of per-operation samples, as an [`Outcome`].
#[cfg(test)]
pub fn latency(metric: Metric, mut samples: Vec<f64>) -> Outcome {
    let runs = samples.len();
    let (median, p99) = median_p99(&mut samples);
    Outcome { metric, median, p99: Some(p99), runs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn cfg() -> Config {
        Config { quick: true, parent_cpu: None, child_cpu: None, cpus: vec![0] }
    }

    #[test]
    fn round_trips_are_timed_in_batches_after_a_warm_up_batch() {
        let calls = Rc::new(Cell::new(0u64));
        let c = calls.clone();
        let mut s = Session::new(Work::RoundTrip(Box::new(move |i| {
            c.set(i);
            std::thread::sleep(Duration::from_micros(100));
            Ok(())
        })));
        let f = s.block(Duration::from_millis(20), Duration::from_secs(10)).unwrap();
        assert_eq!(calls.get() % BATCH, 0, "whole batches");
        assert_eq!(f.samples.len() as u64, calls.get() / BATCH - 1, "the first batch is dropped");
        assert!(f.figure >= 100_000.0, "each round trip sleeps 100 us: {}", f.figure);
        s.finish().unwrap();
    }

    #[test]
    fn a_stream_block_counts_units_after_its_warm_up() {
        let mut total = 0u64;
        let mut s = Session::new(Work::Stream(Box::new(move || {
            std::thread::sleep(Duration::from_millis(1));
            total += 1000;
            Ok(total)
        })));
        let f = s.block(Duration::from_millis(30), Duration::from_secs(10)).unwrap();
        // 1000 units per (1 ms sleep + overhead): at most 1 M/s.
        assert!(f.figure > 0.0 && f.figure <= 1.0e6, "{}", f.figure);
        s.finish().unwrap();
    }

    fn fixed(v: f64) -> Result<Session, String> {
        Ok(Session::new(Work::Sample(Box::new(move || Ok(v)))).placement("here"))
    }

    #[test]
    fn paired_ratios_come_from_both_sessions() {
        let all = vec![
            Case::new("s", "base", Metric::Us, |_| fixed(4.0)),
            Case::new("s", "t", Metric::Us, |_| fixed(2.0)).against("base"),
            Case::new("s", "alone", Metric::Us, |_| fixed(3.0)),
        ];
        let m = measure(&all[1], &all, &cfg(), None).unwrap();
        assert_eq!(m.outcome.median, 2.0);
        assert_eq!(m.ratio, Some(Ratio { median: 0.5, lo: 0.5, hi: 0.5 }));
        assert_eq!(m.baseline, Some("base"));
        assert_eq!(m.placement, "here");
        assert_eq!(m.outcome.runs, cfg().pairs());
        let m = measure(&all[2], &all, &cfg(), None).unwrap();
        assert_eq!((m.ratio, m.baseline, m.floor), (None, None, None));
        // A probe that reads the same before and after: no drift, and the
        // floor is its reading.
        let m = measure(&all[2], &all, &cfg(), Some(|_| fixed(7.0))).unwrap();
        assert_eq!(m.drift, Some(1.0));
        assert_eq!(m.floor, Some(7.0));
        assert!(!m.drifted());
    }

    /// Starts of the probe-like setup below, numbered from 1.
    static PROBE_STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A floor that reads 7.0 in its first session (the probe) and 2.0 in
    /// the next (the paired baseline): the host moved in between.
    fn moving_floor(_: &Config) -> Result<Session, String> {
        let n = PROBE_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fixed(if n == 0 { 7.0 } else { 2.0 })
    }

    #[test]
    fn a_paired_floor_that_disagrees_with_the_probe_flags_drift() {
        let all = vec![
            Case::new("s", "floor", Metric::Us, moving_floor),
            Case::new("s", "t", Metric::Us, |_| fixed(4.0)).against("floor"),
        ];
        let m = measure(&all[1], &all, &cfg(), Some(moving_floor)).unwrap();
        // The probe read 7.0 before and after (its own session), the paired
        // floor 2.0 throughout: 2/7 is the drift.
        assert_eq!(m.drift, Some(2.0 / 7.0));
        assert!(m.drifted());
        assert_eq!(m.ratio.map(|r| r.median), Some(2.0));
    }

    #[test]
    fn drift_is_flagged_beyond_twenty_percent() {
        let m = |d| Measured {
            outcome: throughput(Metric::Us, vec![1.0]),
            baseline: None,
            ratio: None,
            drift: Some(d),
            floor: None,
            placement: String::new(),
        };
        assert!(!m(1.19).drifted() && !m(1.0 / 1.19).drifted());
        assert!(m(1.25).drifted() && m(0.7).drifted());
    }

    #[test]
    fn cases_at_another_placement_than_most_of_the_run_are_named() {
        // Five runs' worth of this host's pingpong floors: one case ran with
        // the CPUs far apart (the pipe's 1.33x among 1.95-2.26x).
        let floors = [Some(75.1), Some(70.7), None, Some(371.0), Some(79.5), Some(98.9), Some(110.0)];
        assert_eq!(placement_outliers(&floors), vec![3]);
        // Within 1.5x of the median either way is the same placement.
        assert!(placement_outliers(&[Some(80.0), Some(119.0), Some(54.0), Some(80.0)]).is_empty());
        assert_eq!(placement_outliers(&[Some(80.0), Some(121.0), Some(53.0), Some(80.0), Some(82.0)]), vec![1, 2]);
        // A run that moved for good: the minority is named, whichever it is.
        assert_eq!(placement_outliers(&[Some(370.0), Some(75.0), Some(80.0), Some(72.0)]), vec![0]);
        // Half and half: no usual placement to name the others against.
        assert!(placement_outliers(&[Some(75.0), Some(370.0), Some(80.0), Some(380.0)]).is_empty());
        assert_eq!(usual_floor(&[Some(75.0), None, Some(80.0), Some(370.0)]), Some(80.0));
        // Too few probed cases to tell, and figures that are no floor.
        assert!(placement_outliers(&[Some(80.0), Some(400.0), None]).is_empty());
        assert_eq!(usual_floor(&[Some(80.0), Some(400.0), Some(f64::NAN)]), None);
        assert!(placement_outliers(&[Some(80.0), Some(81.0), Some(79.0), Some(f64::NAN), Some(0.0)]).is_empty());
    }
}
