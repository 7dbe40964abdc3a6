//! Bench cases of the process pool (`shmproc::Pool`).
//!
//! * `pool-map-trivial`: `map(x * x)` over 1,000,000 `u64` (100,000 quick)
//!   with 2 workers and the default chunking; metric `tasks_per_s`.
//! * `pool-map-chunk1`: the same over 100,000 items (20,000 quick) with
//!   chunksize 1: the pool's own cost per task.
//!
//! * `pool-start`: create a pool of 2, map 2 items, tear it down; metric `us`
//!   per pool; baseline `python-mp` (the same with `multiprocessing.Pool(2)`
//!   in a `with` block, which terminates it), transport `shmproc-pool`.
//! * `pool-map-cpu`: 2,000 tasks (200 quick) of about 1 ms of CPU each;
//!   baseline `sequential` (the same calls one after the other in the
//!   caller's thread), transport `shmproc-pool` (2 workers, chunksize 1):
//!   the ratio is the pool's speed-up on 2 workers.
//!
//! Transports of the map scenarios: `thread-pool`, their baseline (two `std::thread`
//! workers fed task by task through crossbeam-channel by a feeder thread,
//! results sent back the same way and put in input order: a pool without the
//! process boundary); `shmproc-pool` (a `Pool` of 2, default start method);
//! and `python-mp` (Python's `multiprocessing.Pool(2).map`, where `python3`
//! is on the PATH). Both other rows are paired with `thread-pool`.
//!
//! One call of a session is one whole `map`, checked, and its figure is the
//! items over the map's wall time ([`Work::Sample`]); a block runs whole maps
//! (at least one) and reports their median, so a block may run past its
//! nominal length when one map takes longer. Python's script does the same
//! inside Python, but for `pool-map-chunk1` maps a fifth of the items
//! ([`PYTHON_CHUNK1_SHARE`]): at chunksize 1 its rate does not depend on the
//! length (the pipeline fills in two tasks), and the full length would take
//! it over 3 s per map here.
//!
//! Placement: every side of a case may use every CPU of the run, as a user's
//! pool would. The pool and its caller live on a thread of their own
//! ([`Driver`]) whose affinity is [`Config::cpus`] (the bench pins its main
//! thread), and the pool's workers are given the same set (they may have been
//! started by a fork server pinned elsewhere); the thread pool's threads start
//! from such a thread; Python resets its own affinity (see `python.rs`).
//!
//! Fair blocks without `SIGSTOP`: a pool cannot be paused the way the runner
//! pauses a case's children (its workers belong to the pool, which watches
//! them). None needs to be: every block ends with its last map complete, so
//! between blocks each side is idle, blocked: the shmproc pool's dispatcher
//! and workers in their adaptive waits (a short spin, then a futex sleep),
//! the thread pool's threads in crossbeam's `recv` (likewise), Python's
//! workers in a pipe read. The block watchdog still covers a stuck map: it
//! kills the pool's workers (or the Python script), which fails the map.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{os, python, Case, Config, Metric, Session, Work};

/// The cases of this area.
pub fn cases() -> Vec<Case> {
    use Metric::TasksPerS;
    vec![
        Case::new("pool-map-trivial", "thread-pool", TasksPerS, |c| threads(c, trivial_items(c))),
        Case::new("pool-map-trivial", "shmproc-pool", TasksPerS, |c| shmproc_pool(c, trivial_items(c), None)),
        Case::new("pool-map-trivial", "python-mp", TasksPerS, |c| python_pool(c, trivial_items(c), None)),
        Case::new("pool-map-chunk1", "thread-pool", TasksPerS, |c| threads(c, chunk1_items(c))),
        Case::new("pool-map-chunk1", "shmproc-pool", TasksPerS, |c| shmproc_pool(c, chunk1_items(c), Some(1))),
        Case::new("pool-map-chunk1", "python-mp", TasksPerS, |c| {
            python_pool(c, chunk1_items(c) / PYTHON_CHUNK1_SHARE, Some(1))
        }),
        Case::new("pool-start", "python-mp", Metric::Us, |c| python::start(c, PYTHON_POOL_START)),
        Case::new("pool-start", "shmproc-pool", Metric::Us, pool_start),
        Case::new("pool-map-cpu", "sequential", TasksPerS, |c| cpu_map(c, false)),
        Case::new("pool-map-cpu", "shmproc-pool", TasksPerS, |c| cpu_map(c, true)),
    ]
}

/// `pool-start/shmproc-pool`: one sample is one pool created (default start
/// method), a map of 2 items, and its teardown (`Drop` terminates and reaps).
fn pool_start(cfg: &Config) -> Result<Session, String> {
    let (mut d, _) = Driver::start(
        cfg,
        || Ok(((), Vec::new())),
        |_: &mut ()| {
            let t = Instant::now();
            let pool = shmproc::Pool::builder().processes(WORKERS).create().map_err(|e| e.to_string())?;
            let out = pool.map(square, 0..2u64).map_err(|e| e.to_string())?;
            drop(pool);
            let us = t.elapsed().as_secs_f64() * 1e6;
            check(&out, 2)?;
            Ok(us)
        },
    )?;
    Ok(Session::new(Work::Sample(Box::new(move || d.call())))
        .placement(format!("caller and {WORKERS} workers unpinned on {}", cfg.all_cpus_text())))
}

const PYTHON_POOL_START: &str = r#"
def f(x):
    return x * x
def setup():
    pass
def block(secs):
    us = []
    end = time.perf_counter() + secs
    while not us or time.perf_counter() < end:
        t = time.perf_counter()
        with ctx.Pool(2) as pool:
            out = pool.map(f, range(2))
        us.append((time.perf_counter() - t) * 1e6)
        if out != [0, 1]:
            sys.exit("wrong results")
    us.sort()
    return us[len(us) // 2]
"#;

/// Tasks of `pool-map-cpu`.
fn cpu_tasks(cfg: &Config) -> u64 {
    if cfg.quick {
        200
    } else {
        2_000
    }
}

/// About `iters` steps of integer mixing: CPU work that no compiler folds.
fn burn(iters: u64) -> u64 {
    let mut x = iters | 1;
    for i in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x)
}

/// Iterations of [`burn`] that take about 1 ms here, measured once per run
/// (both sessions of the case must run the same tasks).
fn burn_iters_per_ms() -> u64 {
    static ITERS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ITERS.get_or_init(measure_burn)
}

fn measure_burn() -> u64 {
    let mut iters = 1_000u64;
    loop {
        let t = Instant::now();
        burn(iters);
        let dt = t.elapsed();
        if dt >= Duration::from_millis(20) || iters >= 1 << 40 {
            return (iters as f64 / (dt.as_secs_f64() * 1e3)).max(1.0) as u64;
        }
        iters *= 4;
    }
}

/// `pool-map-cpu`: `n` calls of `burn(iters)` in a pool of 2 (chunksize 1),
/// or one after the other in the caller's thread.
fn cpu_map(cfg: &Config, pooled: bool) -> Result<Session, String> {
    let n = cpu_tasks(cfg);
    let cpus = cfg.cpus.clone();
    let (mut d, pids) = Driver::start(
        cfg,
        move || {
            let iters = burn_iters_per_ms();
            if !pooled {
                return Ok(((None, iters), Vec::new()));
            }
            let pool = shmproc::Pool::builder().processes(WORKERS).create().map_err(|e| e.to_string())?;
            let pids = pool.worker_pids();
            for &p in &pids {
                allow_cpus(p, &cpus)?;
            }
            Ok(((Some(pool), iters), pids))
        },
        move |(pool, iters): &mut (Option<shmproc::Pool>, u64)| {
            let t = Instant::now();
            let out = match pool {
                Some(p) => {
                    p.map_chunksize(burn, std::iter::repeat_n(*iters, n as usize), 1).map_err(|e| e.to_string())?
                }
                None => (0..n).map(|_| burn(*iters)).collect(),
            };
            let r = rate(n, t);
            if out.len() as u64 != n || out.iter().any(|&v| v != out[0]) {
                return Err("wrong results".into());
            }
            Ok(r)
        },
    )?;
    let mut s = Session::new(Work::Sample(Box::new(move || d.call())));
    for p in pids {
        s = s.watch(p);
    }
    let placement = if pooled {
        format!("caller and {WORKERS} workers unpinned on {}", cfg.all_cpus_text())
    } else {
        format!("one thread unpinned on {}", cfg.all_cpus_text())
    };
    Ok(s.placement(placement))
}

/// `pool-map-chunk1/python-mp` maps this fraction of the items (see the module docs).
pub const PYTHON_CHUNK1_SHARE: u64 = 5;

/// Workers of every pool here.
const WORKERS: usize = 2;

fn trivial_items(cfg: &Config) -> u64 {
    if cfg.quick {
        100_000
    } else {
        1_000_000
    }
}

fn chunk1_items(cfg: &Config) -> u64 {
    if cfg.quick {
        20_000
    } else {
        100_000
    }
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn check(out: &[u64], n: u64) -> Result<(), String> {
    if out.len() as u64 != n || out.iter().enumerate().any(|(i, &v)| v != square(i as u64)) {
        return Err("wrong results".into());
    }
    Ok(())
}

/// Items over the time since `t`.
fn rate(n: u64, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64()
}

/// A thread of its own, allowed on every CPU of the run, that owns one side of
/// a pool case (the pool and the caller of `map`) and runs one whole map per
/// [`Driver::call`]. The state it drives is made on that thread (so it need
/// not be `Send`) and dropped there when the driver is dropped.
struct Driver {
    go: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<Result<f64, String>>,
    thread: Option<JoinHandle<()>>,
    /// How long a call waits for its map.
    limit: Duration,
    /// A call timed out: the thread may still be in its map, do not join it.
    stuck: bool,
}

impl Driver {
    /// Starts the thread: `setup` makes the state and names the processes the
    /// block watchdog may kill (returned here); each call runs `step` on it.
    fn start<S: 'static>(
        cfg: &Config,
        setup: impl FnOnce() -> Result<(S, Vec<u32>), String> + Send + 'static,
        mut step: impl FnMut(&mut S) -> Result<f64, String> + Send + 'static,
    ) -> Result<(Driver, Vec<u32>), String> {
        let cpus = cfg.cpus.clone();
        let (go, go_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-pool".into())
            .spawn(move || {
                if let Err(e) = os::pin_to_cpus(&cpus) {
                    let _ = ready_tx.send(Err(format!("cannot allow CPUs {cpus:?}: {e}")));
                    return;
                }
                let mut state = match setup() {
                    Ok((s, pids)) => {
                        let _ = ready_tx.send(Ok(pids));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for () in go_rx.iter() {
                    if done_tx.send(step(&mut state)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("starting the bench thread: {e}"))?;
        let limit = cfg.stall_limit();
        let mut d = Driver { go: Some(go), done, thread: Some(thread), limit, stuck: false };
        match ready.recv_timeout(limit) {
            Ok(Ok(pids)) => Ok((d, pids)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                d.stuck = true;
                Err("the pool was not set up in time".into())
            }
        }
    }

    /// Runs one map on the driver's thread and returns its figure.
    fn call(&mut self) -> Result<f64, String> {
        let go = self.go.as_ref().ok_or("the bench thread has ended")?;
        go.send(()).map_err(|_| "the bench thread has ended")?;
        match self.done.recv_timeout(self.limit) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.stuck = true;
                Err(format!("a map took over {} s", self.limit.as_secs()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the bench thread ended (panicked?)".into()),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Closing `go` ends the thread's loop; it drops the state (a `Pool`
        // terminates and reaps its workers, the thread pool joins its threads).
        drop(self.go.take());
        if let Some(t) = self.thread.take() {
            if !self.stuck {
                let _ = t.join();
            }
        }
    }
}

/// Lets process `pid` (its main thread) run on every CPU in `cpus`.
fn allow_cpus(pid: u32, cpus: &[usize]) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    let p = rustix::process::Pid::from_raw(pid as i32).ok_or("a worker without a pid")?;
    rustix::thread::sched_setaffinity(Some(p), &set).map_err(|e| format!("affinity of worker {pid}: {e}"))
}

fn shmproc_pool(cfg: &Config, n: u64, chunksize: Option<usize>) -> Result<Session, String> {
    let cpus = cfg.cpus.clone();
    let (mut d, pids) = Driver::start(
        cfg,
        move || {
            let pool = shmproc::Pool::builder().processes(WORKERS).create().map_err(|e| e.to_string())?;
            let pids = pool.worker_pids();
            for &p in &pids {
                allow_cpus(p, &cpus)?;
            }
            Ok((pool, pids))
        },
        move |pool: &mut shmproc::Pool| {
            let t = Instant::now();
            let out = match chunksize {
                None => pool.map(square, 0..n),
                Some(c) => pool.map_chunksize(square, 0..n, c),
            }
            .map_err(|e| e.to_string())?;
            let r = rate(n, t);
            check(&out, n)?;
            Ok(r)
        },
    )?;
    let mut s = Session::new(Work::Sample(Box::new(move || d.call())));
    for p in pids {
        s = s.watch(p);
    }
    Ok(s.placement(format!("caller and {WORKERS} workers unpinned on {}", cfg.all_cpus_text())))
}

/// Two worker threads and a feeder, kept for the whole case.
struct ThreadPool {
    /// To the feeder: "submit tasks 0..n".
    feed: Option<Sender<u64>>,
    results: Receiver<(usize, u64)>,
    threads: Vec<JoinHandle<()>>,
    limit: Duration,
}

impl ThreadPool {
    fn new(limit: Duration) -> Result<ThreadPool, String> {
        let (task_tx, task_rx) = crossbeam_channel::unbounded::<(usize, u64)>();
        let (res_tx, results) = crossbeam_channel::unbounded::<(usize, u64)>();
        let (feed, feed_rx) = crossbeam_channel::unbounded::<u64>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| format!("starting a thread: {e}"))
        };
        let mut threads = Vec::new();
        for _ in 0..WORKERS {
            let (rx, tx) = (task_rx.clone(), res_tx.clone());
            threads.push(spawn(
                "bench-worker",
                Box::new(move || {
                    for (i, x) in rx.iter() {
                        if tx.send((i, square(x))).is_err() {
                            break;
                        }
                    }
                }),
            )?);
        }
        // Fed task by task while the results come back, as a pool's thread does.
        threads.push(spawn(
            "bench-feeder",
            Box::new(move || {
                for n in feed_rx.iter() {
                    for x in 0..n {
                        if task_tx.send((x as usize, x)).is_err() {
                            return;
                        }
                    }
                }
            }),
        )?);
        Ok(ThreadPool { feed: Some(feed), results, threads, limit })
    }

    fn map(&mut self, n: u64) -> Result<Vec<u64>, String> {
        self.feed.as_ref().ok_or("closed")?.send(n).map_err(|_| "the feeder thread ended")?;
        let mut out = vec![0u64; n as usize];
        for _ in 0..n {
            let (i, v) = self.results.recv_timeout(self.limit).map_err(|_| "a thread-pool worker stopped")?;
            out[i] = v;
        }
        Ok(out)
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // No more feeds: the feeder ends, dropping the task sender, so the
        // workers' `iter()` ends too.
        drop(self.feed.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn threads(cfg: &Config, n: u64) -> Result<Session, String> {
    let limit = cfg.stall_limit();
    let (mut d, _) = Driver::start(
        cfg,
        move || Ok((ThreadPool::new(limit)?, Vec::new())),
        move |p: &mut ThreadPool| {
            let t = Instant::now();
            let out = p.map(n)?;
            let r = rate(n, t);
            check(&out, n)?;
            Ok(r)
        },
    )?;
    Ok(Session::new(Work::Sample(Box::new(move || d.call())))
        .placement(format!("caller, feeder and {WORKERS} worker threads unpinned on {}", cfg.all_cpus_text())))
}

/// `setup()` and `block(secs)` for `python.rs`'s driver; `{N}` and `{CHUNK}`
/// are filled in. A block runs whole maps (at least one) and prints their
/// median rate.
const PYTHON_POOL_MAP: &str = r#"
def f(x):
    return x * x
N, CHUNK = {N}, {CHUNK}
def setup():
    global pool
    pool = ctx.Pool(2)
def block(secs):
    rates = []
    end = time.perf_counter() + secs
    while not rates or time.perf_counter() < end:
        t = time.perf_counter()
        out = pool.map(f, range(N), chunksize=CHUNK)
        dt = time.perf_counter() - t
        if len(out) != N or out[-1] != (N - 1) * (N - 1):
            sys.exit("wrong results")
        rates.append(N / dt)
    rates.sort()
    return rates[len(rates) // 2]
"#;

fn python_pool(cfg: &Config, n: u64, chunksize: Option<usize>) -> Result<Session, String> {
    let chunk = chunksize.map_or_else(|| "None".to_string(), |c| c.to_string());
    let body = PYTHON_POOL_MAP.replace("{N}", &n.to_string()).replace("{CHUNK}", &chunk);
    python::start(cfg, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config { quick: true, parent_cpu: None, child_cpu: None, cpus: os::allowed_cpus() }
    }

    #[test]
    fn the_thread_pool_maps_in_input_order_and_stops_its_threads() {
        let mut s = threads(&cfg(), 10_000).expect("thread pool");
        let f = s.block(Duration::from_millis(5), Duration::from_secs(60)).expect("a block");
        assert!(f.figure > 0.0 && !f.samples.is_empty(), "{f:?}");
        s.finish().expect("finish joins the threads");
    }

    #[test]
    fn the_shmproc_pool_session_maps_and_terminates_its_workers() {
        let mut s = shmproc_pool(&cfg(), 2_000, Some(1)).expect("pool");
        let f = s.block(Duration::from_millis(5), Duration::from_secs(60)).expect("a block");
        assert!(f.figure > 0.0 && !f.samples.is_empty(), "{f:?}");
        s.finish().expect("finish");
    }

    #[test]
    fn check_refuses_a_wrong_or_short_result() {
        assert!(check(&[0, 1, 4, 9], 4).is_ok());
        assert!(check(&[0, 1, 4, 8], 4).is_err());
        assert!(check(&[0, 1, 4], 4).is_err());
    }

    #[test]
    fn python_pool_script_fills_its_sizes() {
        let body = PYTHON_POOL_MAP.replace("{N}", "7").replace("{CHUNK}", "None");
        assert!(body.contains("N, CHUNK = 7, None") && !body.contains('{'), "{body}");
    }
}
